"""remora-init against the real kernel: pods in network namespaces, legacy iptables, sockets.

A probe server stands in for the proxy's listeners (15001 outbound, 15006 inbound) and for
apps; it answers with the original destination it reads through sidecar.original_dst, so every
assertion says where a connection landed and where it was going.
"""

from __future__ import annotations

import shutil

import pytest
from init_kit import (
    APP_UID,
    ask,
    dry_run_lines,
    init_ok,
    remora_lines,
    resolving,
    run_init,
    saved,
    serving,
)

from control_plane.api.ports import (
    DNS_PORT,
    HEALTH_PORT,
    INBOUND_PASSTHROUGH_SOURCE,
    INBOUND_PORT,
    OUTBOUND_PORT,
    PROXY_GID,
    PROXY_UID,
)
from local_cluster.netns import Node

pytestmark = pytest.mark.root


def test_app_connection_is_intercepted_and_original_dst_recovered(node: Node) -> None:
    a, b = node.add_pod("a"), node.add_pod("b")
    init_ok(a)
    with serving(a, OUTBOUND_PORT, "proxy"):
        assert ask(a, b.ip, 8080) == f"proxy {b.ip} 8080"
        assert ask(a, b.ip6, 9443) == f"proxy {b.ip6} 9443"


def test_original_dst_on_an_ipv4_listener_and_on_a_direct_dial(node: Node) -> None:
    a, b = node.add_pod("a"), node.add_pod("b")
    init_ok(a)
    with serving(a, OUTBOUND_PORT, "proxy", ipv4_only=True):
        assert ask(a, b.ip, 80) == f"proxy {b.ip} 80"
        # Dialled directly (not redirected): the listener's own address, which a proxy must
        # refuse as a loop (see sidecar/original_dst.py).
        assert ask(a, "127.0.0.1", OUTBOUND_PORT) == f"proxy 127.0.0.1 {OUTBOUND_PORT}"


def test_proxy_uid_and_gid_are_not_intercepted(node: Node) -> None:
    a, b = node.add_pod("a"), node.add_pod("b")
    init_ok(a)
    with serving(a, OUTBOUND_PORT, "proxy"), serving(b, 8080, "b", uid=APP_UID):
        assert ask(a, b.ip, 8080, uid=PROXY_UID).startswith("b ")
        assert ask(a, b.ip, 8080, uid=PROXY_UID, gid=APP_UID).startswith("b ")
        assert ask(a, b.ip6, 8080, uid=PROXY_UID).startswith("b ")
        assert ask(a, b.ip, 8080, uid=APP_UID, gid=PROXY_GID).startswith("b ")
        assert ask(a, b.ip, 8080).startswith("proxy ")  # the same call as the app is captured


def test_excluded_ports_and_cidrs_bypass_the_proxy(node: Node) -> None:
    a, b, c = node.add_pod("a"), node.add_pod("b"), node.add_pod("c")
    init_ok(a, "--exclude-outbound-ports", "9090", "--include-outbound-ports", "7070",
            "--exclude-outbound-cidrs", f"{b.ip}/32,{b.ip6}/128")
    with serving(a, OUTBOUND_PORT, "proxy"), serving(b, 8080, "b"), serving(c, 9090, "c"):
        assert ask(a, c.ip, 9090).startswith("c ")  # excluded port
        assert ask(a, b.ip, 8080).startswith("b ")  # excluded CIDR
        assert ask(a, b.ip6, 8080).startswith("b ")  # excluded CIDR, IPv6
        assert ask(a, b.ip, 7070) == f"proxy {b.ip} 7070"  # included port beats excluded CIDR
        assert ask(a, c.ip, 8080) == f"proxy {c.ip} 8080"  # everything else is captured


def test_only_included_cidrs_are_captured(node: Node) -> None:
    a, b, c = node.add_pod("a"), node.add_pod("b"), node.add_pod("c")
    init_ok(a, "--include-outbound-cidrs", f"{c.ip}/32")
    with serving(a, OUTBOUND_PORT, "proxy"), serving(b, 8080, "b"):
        assert ask(a, c.ip, 8080) == f"proxy {c.ip} 8080"
        assert ask(a, b.ip, 8080).startswith("b ")
        assert ask(a, b.ip6, 8080).startswith("b ")  # no IPv6 CIDR included: none captured


def test_inbound_lands_on_15006_with_original_port(node: Node) -> None:
    a, b = node.add_pod("a"), node.add_pod("b")
    init_ok(b, "--exclude-inbound-ports", "9090")
    with serving(b, INBOUND_PORT, "inbound"), serving(b, 9090, "app"), \
            serving(b, HEALTH_PORT, "health"):
        assert ask(a, b.ip, 8080) == f"inbound {b.ip} 8080"
        assert ask(a, b.ip6, 8080) == f"inbound {b.ip6} 8080"
        assert ask(a, b.ip, 9090).startswith("app ")  # excluded inbound port
        assert ask(a, b.ip, HEALTH_PORT).startswith("health ")  # the proxy's own port


def test_only_listed_inbound_ports_are_captured(node: Node) -> None:
    a, b = node.add_pod("a"), node.add_pod("b")
    init_ok(b, "--include-inbound-ports", "8080")
    with serving(b, INBOUND_PORT, "inbound"), serving(b, 9090, "app"):
        assert ask(a, b.ip, 8080) == f"inbound {b.ip} 8080"
        assert ask(a, b.ip, 9090).startswith("app ")


def test_app_calling_its_own_service_through_the_proxy(node: Node) -> None:
    """app → outbound proxy → own pod IP must reach the inbound proxy, whose hop to the app
    from 127.0.0.6 must not be captured again."""
    a = node.add_pod("a")
    init_ok(a)
    with serving(a, INBOUND_PORT, "inbound"), serving(a, 8080, "app", uid=APP_UID):
        assert ask(a, a.ip, 8080, uid=PROXY_UID) == f"inbound {a.ip} 8080"
        assert ask(a, a.ip, 8080, uid=PROXY_UID, source=INBOUND_PASSTHROUGH_SOURCE
                   ).startswith("app ")
        assert ask(a, "127.0.0.1", 8080).startswith("app ")  # localhost is never captured


def test_rules_in_place_are_the_dry_run_plan(node: Node) -> None:
    a = node.add_pod("a")
    args = ("--include-inbound-ports", "80,8080", "--exclude-outbound-cidrs", "198.19.0.0/16")
    init_ok(a, *args)
    for family in (4, 6):
        assert remora_lines(a, family) == dry_run_lines(*args, family=family)


def test_rerun_is_idempotent_and_repairs(node: Node) -> None:
    a = node.add_pod("a")
    init_ok(a)
    first = (remora_lines(a, 4), remora_lines(a, 6))
    init_ok(a)
    assert (remora_lines(a, 4), remora_lines(a, 6)) == first
    # Break it the ways a crash or a hand edit would: lost rule, doubled jump, stale chain.
    for cmd in (["-D", "REMORA_OUTPUT", "2"], ["-A", "OUTPUT", "-p", "tcp", "-j", "REMORA_OUTPUT"],
                ["-N", "REMORA_OLD"], ["-A", "PREROUTING", "-j", "REMORA_OLD"]):
        a.exec(["iptables-legacy", "-t", "nat", *cmd], check=True)
    a.exec(["ip6tables-legacy", "-t", "nat", "-F", "REMORA_REDIRECT"], check=True)
    assert run_init(a, "--verify").returncode == 1
    init_ok(a)
    assert (remora_lines(a, 4), remora_lines(a, 6)) == first
    assert run_init(a, "--verify").returncode == 0


def test_cleanup_removes_every_remora_chain_and_keeps_other_rules(node: Node) -> None:
    a = node.add_pod("a")
    a.exec(["iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN"], check=True)
    init_ok(a)
    init_ok(a, "--cleanup")
    for family in (4, 6):
        assert "REMORA_" not in saved(a, family)
    assert "-A OUTPUT -p udp -j RETURN" in saved(a, 4)
    init_ok(a, "--cleanup")  # nothing left to remove is fine


def test_verify_fails_after_a_rule_is_deleted_by_hand(node: Node) -> None:
    a = node.add_pod("a")
    init_ok(a)
    assert run_init(a, "--verify").returncode == 0
    a.exec(["ip6tables-legacy", "-t", "nat", "-D", "REMORA_INBOUND", "1"], check=True)
    res = run_init(a, "--verify")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1
    assert "IPv6 REMORA_INBOUND rule 1" in res.stderr
    assert "--dport 15020" in res.stderr  # names the rule that is gone


def test_verify_fails_when_nothing_is_in_place(node: Node) -> None:
    a = node.add_pod("a")
    res = run_init(a, "--verify")
    assert res.returncode == 1
    assert "IPv4 chain REMORA_DNS is missing" in res.stderr


def test_ipv6_puts_the_passthrough_address_on_lo(node: Node) -> None:
    """The inbound hop to an IPv6 app leaves from ::6; its answers must come back to lo."""
    pod = node.add_pod("p")
    assert "::6/128" not in pod.exec(["ip", "-6", "addr", "show", "dev", "lo"]).stdout
    for _ in range(2):  # idempotent
        init_ok(pod)
        assert "::6/128" in pod.exec(["ip", "-6", "addr", "show", "dev", "lo"]).stdout
    init_ok(pod, "--no-ipv6")


# -- DNS capture: the app's port-53 queries go to the proxy's DNS port, the proxy's go out ----

PROXY_ANSWER, RESOLVER_ANSWER = "198.18.250.1", "198.18.250.2"
# REDIRECT delivers to 127.0.0.1; a UDP server must answer from there (a wildcard socket would
# answer from the pod's IP, which conntrack does not map back), so the proxy binds loopback.
LOOPBACK = "127.0.0.1"


def _dig(pod, server: str, *opts: str, uid: int = APP_UID) -> str:
    res = pod.exec(["dig", "+short", "+time=2", "+tries=1", *opts, f"@{server}", "svc.test"],
                   uid=uid, gid=uid, timeout=20)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip()


def test_dns_queries_are_captured_over_udp_and_tcp_except_the_proxys(node: Node) -> None:
    if not shutil.which("dig"):
        pytest.skip("dig is not installed (apt-get install dnsutils)")
    a, b = node.add_pod("a"), node.add_pod("b")
    init_ok(a)
    with resolving(a, DNS_PORT, PROXY_ANSWER, PROXY_UID, LOOPBACK), resolving(b, 53, RESOLVER_ANSWER, uid=0):
        assert _dig(a, b.ip) == PROXY_ANSWER
        assert _dig(a, b.ip, "+tcp") == PROXY_ANSWER
        assert _dig(a, b.ip, uid=PROXY_UID) == RESOLVER_ANSWER  # the proxy forwarding
        assert _dig(a, b.ip, "+tcp", uid=PROXY_UID) == RESOLVER_ANSWER


def test_dns_capture_off_leaves_port_53_alone(node: Node) -> None:
    if not shutil.which("dig"):
        pytest.skip("dig is not installed (apt-get install dnsutils)")
    a, b = node.add_pod("a"), node.add_pod("b")
    init_ok(a, "--dns-capture", "false")
    assert not [line for line in remora_lines(a) if "REMORA_DNS" in line]
    with resolving(a, DNS_PORT, PROXY_ANSWER, PROXY_UID, LOOPBACK), resolving(b, 53, RESOLVER_ANSWER, uid=0):
        assert _dig(a, b.ip) == RESOLVER_ANSWER
