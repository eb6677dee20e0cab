"""remoractl demo: the sample app on a local cluster, measured by its own proxies.

Starts the local cluster, applies examples/manifests (web -> catalog -> reviews v1/v2, a
loadgen pod, reviews split 80/20, STRICT mTLS), lets the loadgen drive traffic, prints one row
per edge from the proxies' :15090 metrics, checks the split and mTLS, then tears everything
down (also on Ctrl-C). ``--keep`` leaves it running. ``--upgrade`` then rehearses a proxy
release: the injector is told to inject the next patch version, and ``remoractl upgrade``
restarts every workload in health-gated waves while the loadgen keeps calling (the requests that
failed meanwhile are counted; see docs/upgrade.md).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from local_cluster import client, config
from local_cluster.client import ClusterError
from local_cluster.testing import sample
from remoractl.dashboard import DEFAULT_PORT as DASHBOARD_PORT


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="run the sample app on a local cluster and show it",
                              description=__doc__)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of traffic to measure")
    p.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    p.add_argument("--json", action="store_true", help="also print the measurement as JSON")
    p.add_argument("--upgrade", action="store_true",
                   help="then roll out a next proxy version with remoractl upgrade, under load")
    return p


def _say(text: str = "", end: str = "\n") -> None:
    print(text, end=end, flush=True)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f}ms" if seconds < 1 else f"{seconds:.2f}s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _short(service: str) -> str:
    return service.split(".")[0] if service.endswith(".svc.cluster.local") else service


def report(m: sample.Measurement) -> bool:
    """Print the tables and the checks; True when the split and mTLS checks pass."""
    out = [e for e in m.edges if e.direction == "outbound"]
    rows = [["SOURCE -> DESTINATION", "REQUESTS", "RPS", "SUCCESS", "P50", "P99",
             "CLIENT SPIFFE ID, as the server's proxy saw it"]]
    for e in out:
        seen = sorted(set().union(*m.seen_by_servers(e).values()))
        rows.append([f"{e.workload} -> {_short(e.service)}", f"{e.requests:.0f}",
                     f"{e.requests / m.seconds:.1f}", _pct(e.success_rate), _ms(e.quantile(0.5)),
                     _ms(e.quantile(0.99)), ", ".join(seen) or "-"])
    _say(f"\nEdges over {m.seconds:.0f} s (numbers from the client's proxy, identity from the server's):")
    _say(_table(rows) if out else "  (no outbound requests were counted)")
    inb = [e for e in m.edges if e.direction == "inbound"]
    rows = [["SERVER", "SERVICE", "REQUESTS", "SUCCESS", "P50", "P99", "CLIENT IDENTITY (from its certificate)"]]
    for e in inb:
        rows.append([e.workload, _short(e.service), f"{e.requests:.0f}", _pct(e.success_rate),
                     _ms(e.quantile(0.5)), _ms(e.quantile(0.99)), ", ".join(sorted(e.peers)) or "-"])
    _say("\nServer side (inbound, per destination workload):")
    _say(_table(rows) if inb else "  (no inbound requests were counted)")
    for pod, err in sorted(m.scrape_errors.items()):
        _say(f"  ! could not scrape {pod}: {err}")

    ok_split = sample.split_ok(m.split)
    shares = ", ".join(f"{w} {_pct(s)}" for w, s in m.split.items())
    want = "/".join(f"{v * 100:.0f}" for v in sample.SPLIT.values())
    _say(f"\nTraffic split for reviews (VirtualService {want}): {shares} -> "
         + ("OK (within 10 points)" if ok_split else "NOT as configured"))
    spiffe = all(e.peers and all(p.startswith("spiffe://") for p in e.peers) for e in inb)
    _say("mTLS between pods:")
    _say(f"  - every server saw a SPIFFE client identity on every edge: {'yes' if inb and spiffe else 'NO'}")
    t = m.handshakes
    _say(f"  - since the proxies started: {t.get('handshakes client', 0):.0f} client and "
         f"{t.get('handshakes server', 0):.0f} server mTLS handshakes; "
         f"{t.get('pooled reuses', 0):.0f} requests reused a pooled mTLS connection")
    _say(f"  - plaintext from outside the mesh to {m.plaintext}"
         + (" -> STRICT is enforced" if m.plaintext_refused else " -> NOT refused"))
    return ok_split and spiffe and m.plaintext_refused


def _looking_around(state: config.StateDir) -> None:
    env = "" if str(state.root) == str(config.DEFAULT_DIR) else f"REMORA_LOCAL_DIR={state.root} "
    ctl = f"{env}{sys.executable.rsplit('/', 1)[0]}/remoractl"
    _say("\nThe cluster is still running. Look around:")
    for cmd in ("local status", "local logs -n demo loadgen",
                "local logs -n demo loadgen -c remora-proxy",
                "local exec -n demo loadgen -- curl -s http://web:8080/",
                "local exec -n demo loadgen -c remora-proxy -- curl -s 127.0.0.1:15090/metrics",
                "stat -n demo", "local down"):
        _say(f"  {ctl} {cmd}")
    _say(f"Live dashboard: {ctl} dashboard -n demo, then open "
         f"http://127.0.0.1:{DASHBOARD_PORT}/")


def next_version(version: str) -> str:
    """The next patch release of ``version`` (0.1.0 -> 0.1.1; anything else gets ``.1``)."""
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last) + 1}" if head and last.isdigit() else f"{version}.1"


def show_upgrade(state: config.StateDir) -> bool:
    """A new proxy version rolled out by `remoractl upgrade` under the loadgen's traffic."""
    import tempfile

    from injector import meshconfig
    from remoractl import upgrade
    from remoractl.cli import build_parser

    nxt = next_version(meshconfig.load(state.mesh_config).proxy_version)
    _say(f"\n[upgrade 1/2] a new proxy release: remoractl local injector --set proxyVersion={nxt}")
    client.checked(state, "POST", "/injector", {"meshConfig": {"proxyVersion": nxt}})
    cmd = ["upgrade", "-n", "demo", "--max-unavailable", "2", "--observe", "5", "--cluster", "local"]
    _say(f"[upgrade 2/2] remoractl {' '.join(cmd)}  (the loadgen keeps calling web)")
    before = sample.loadgen_codes(state)
    with tempfile.TemporaryDirectory() as tmp:
        rc = upgrade.run(build_parser().parse_args([*cmd, "--state-file", f"{tmp}/state.json"]))
    codes = sample.codes_between(before, sample.loadgen_codes(state))
    total, failed = sum(codes.values()), sum(v for c, v in codes.items() if c[:1] not in "23")
    versions = sorted({p["proxyVersion"] for p in sample.pods(state)})
    _say(f"during the upgrade: {total:.0f} requests from loadgen to web, {failed:.0f} failed; "
         f"proxy versions now: {', '.join(versions)} (loadgen is a bare pod: reported, not restarted)")
    return rc == 0 and failed == 0


def run(args: argparse.Namespace) -> int:
    state = config.StateDir.from_env()
    if client.running(state):
        print("remoractl demo: a local cluster is already running; "
              "run `remoractl local down` first", file=sys.stderr)
        return 1
    keep = args.keep

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)  # a killed demo tears down as Ctrl-C does
    try:
        return _demo(state, args)
    except ClusterError as e:
        print(f"remoractl demo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        keep = False
        _say("\ninterrupted")
        return 130
    finally:
        if not keep:
            _say("tearing down ...", end=" ")
            client.down(state)
            _say("done: namespaces, processes, rules and files removed")


def _demo(state: config.StateDir, args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    _say("[1/5] starting the local cluster (node namespace, control plane, injector webhook) ...",
         end=" ")
    status = client.up(state)
    _say(f"up in {time.monotonic() - t0:.1f} s ({status['node']['netns']}, {state.root})")
    _say(f"[2/5] applying {sample.MANIFESTS.relative_to(config.REPO_ROOT)}/ "
         "(pods go through the injector webhook) ...", end=" ")
    results = sample.apply(state)
    kinds = sorted({r["object"].split()[0] for r in results})
    _say(f"{len(results)} objects ({', '.join(kinds)})")
    t1 = time.monotonic()
    _say("[3/5] waiting for the pods to be ready ...", end=" ")
    ready = sample.wait_ready(state)
    not_injected = [p["name"] for p in ready if not sample.injected(p)]
    versions = sorted({p["proxyVersion"] for p in ready})
    _say(f"{len(ready)}/{len(ready)} in {time.monotonic() - t1:.1f} s; injected: "
         + ("all" if not not_injected else f"NOT {', '.join(not_injected)}")
         + f" (remora-init + remora-proxy {', '.join(versions)})")
    _say(f"[4/5] the loadgen pod drives ~25 req/s through the mesh; measuring {args.duration:.0f} s ",
         end="")
    m = sample.measure(state, args.duration, tick=lambda _: _say(".", end=""))
    _say(" done")
    _say("[5/5] results, from the proxies' own metrics (:15090/metrics of every pod)")
    good = report(m) and not not_injected
    if args.upgrade:
        good = show_upgrade(state) and good
    if args.json:
        _say(sample.as_json(m))
    if args.keep:
        _looking_around(state)
    total = sum(e.requests for e in m.edges if e.direction == "outbound")
    ok = sum(e.ok for e in m.edges if e.direction == "outbound")
    _say(f"\nsummary: {total:.0f} requests between pods, {_pct(ok / total if total else None)} "
         f"succeeded; checks {'passed' if good else 'FAILED'}")
    return 0 if good else 1
