"""The namespace helpers themselves: pods reach each other, run as a uid, and leave nothing."""

from __future__ import annotations

import time

import pytest

from local_cluster import netns

pytestmark = pytest.mark.root


def test_pods_reach_each_other_over_the_bridge(node: netns.Node) -> None:
    a = node.add_pod("a")
    b = node.add_pod("b")
    assert a.ip != b.ip
    assert a.ip.startswith("198.18.")
    out = a.exec(["ping", "-c1", "-W2", b.ip]) if _has_ping() else None
    if out is not None:
        assert out.returncode == 0, out.stderr
    # A TCP round trip with Python itself (no ping needed).
    server = b.spawn(["python3", "-c", _ECHO_SERVER])
    try:
        res = a.exec(["python3", "-c", _CONNECT.format(host=b.ip)], timeout=20)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "pong"
    finally:
        netns.stop_process(server)


def test_ipv6_between_pods(node: netns.Node) -> None:
    a = node.add_pod("a")
    b = node.add_pod("b")
    assert b.ip6 and b.ip6.startswith("fd00:18::")
    server = b.spawn(["python3", "-c", _ECHO_SERVER.replace("0.0.0.0", "::").replace("AF_INET", "AF_INET6")])
    try:
        res = a.exec(["python3", "-c", _CONNECT.format(host=b.ip6).replace("AF_INET", "AF_INET6")], timeout=20)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "pong"
    finally:
        netns.stop_process(server)


def test_exec_as_uid(node: netns.Node) -> None:
    a = node.add_pod("a")
    res = a.exec(["id", "-u"], uid=1337, gid=1337)
    assert res.stdout.strip() == "1337"


def test_hosts_file_is_per_pod(node: netns.Node) -> None:
    a = node.add_pod("a")
    a.write_hosts({"reviews": "198.19.0.10"})
    res = a.exec(["getent", "hosts", "reviews"])
    assert res.stdout.split()[0] == "198.19.0.10"


def test_destroy_removes_everything() -> None:
    if netns.have_root_and_tools():
        pytest.skip("needs root")
    n = netns.Node.create(netns.new_prefix("cleanup"))
    pod = n.add_pod("x")
    sleeper = pod.spawn(["sleep", "300"])
    # Destroy only once the process is inside (ip netns exec may not have entered it yet).
    deadline = time.monotonic() + 10
    while sleeper.pid not in netns.netns_pids(pod.netns) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sleeper.pid in netns.netns_pids(pod.netns)
    n.destroy()
    sleeper.wait(5)
    assert not [ns for ns in netns.list_netns() if ns.startswith(n.prefix)]
    assert not (netns.NETNS_ETC / pod.netns).exists()
    n.destroy()  # twice is fine


def _has_ping() -> bool:
    import shutil

    return shutil.which("ping") is not None


_ECHO_SERVER = """
import socket
s = socket.socket(socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen()
while True:
    c, _ = s.accept(); c.recv(16); c.sendall(b"pong"); c.close()
"""

_CONNECT = """
import socket, time
for _ in range(100):
    try:
        c = socket.create_connection(("{host}", 7000), timeout=2); break
    except OSError:
        time.sleep(0.05)
c.sendall(b"ping"); print(c.recv(16).decode())
"""
