#!/usr/bin/env python3
"""Control-plane scale: push latency to N proxies and control-plane memory per proxy.

    .venv/bin/python perf/cp_scale.py [--proxies 100,1000,2000] [--changes 5] [--services 20]

For each N: start a real ``remora-control`` (files source, loopback, TLS), start N simulated
proxies in a separate process (asyncio WebSocket clients over TLS, each with its own token and
pod name, ACKing every snapshot), then change the VirtualService weights ``--changes`` times and
measure, for each change, the time from the manifest write until the last proxy ACKed the new
version (confirmed on the control plane's /debug/proxies: all SYNCED at that version). The
time includes the files source's poll interval (0.2 s) and the debounce quiet time (0.1 s).
RSS per proxy = (control-plane RSS with N connected - RSS before any connected) / N.

Results: perf/results/cp_scale.json. No timed asserts: this is a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from control_plane.api import discovery as wire  # noqa: E402
from control_plane.api import tokens  # noqa: E402

BIN = Path(sys.executable).parent
_VERSION = re.compile(r'^\{"type":"snapshot","version":"([0-9a-f]+)"')


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


# -- the mesh the control plane serves -------------------------------------------------------

def manifests(services: int, v1: int, v2: int) -> str:
    docs = []
    for i in range(services):
        name = "reviews" if i == 0 else f"svc{i}"
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "perf"},
                     "spec": {"clusterIP": f"198.19.{i // 250}.{i % 250 + 1}", "selector": {"app": name},
                              "ports": [{"name": "http", "port": 9080, "targetPort": 8080}]}})
        for v in ("v1", "v2"):
            n = 2 * i + (v == "v2")
            docs.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": f"{name}-{v}", "namespace": "perf",
                                      "labels": {"app": name, "version": v},
                                      "annotations": {"remora.dev/status": "{}"}},
                         "spec": {"serviceAccountName": name},
                         "status": {"podIP": f"198.18.{n // 250}.{n % 250 + 10}"}})
    docs.append({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                 "metadata": {"name": "reviews", "namespace": "perf"},
                 "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                         {"name": "v2", "labels": {"version": "v2"}}]}})
    docs.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                 "metadata": {"name": "reviews", "namespace": "perf"},
                 "spec": {"hosts": ["reviews"], "http": [{"route": [
                     {"destination": {"host": "reviews", "subset": "v1"}, "weight": v1},
                     {"destination": {"host": "reviews", "subset": "v2"}, "weight": v2}]}]}})
    return "\n---\n".join(json.dumps(d) for d in docs)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- simulated proxies (the child process) ---------------------------------------------------

async def simulate(n: int, port: int, key: bytes, root: str) -> None:
    """N proxies; commands on stdin ("expect VERSION"), reports on stdout (JSON lines)."""
    from control_plane.api.wsclient import WebSocketError, connect

    ctx = ssl.create_default_context(cafile=root)
    acked: dict[int, str] = {}
    waiting: dict[str, asyncio.Future] = {}
    counts: dict[str, int] = {}
    complete_at: dict[str, float] = {}  # when the last of the n proxies ACKed each version
    gate = asyncio.Semaphore(64)  # concurrent TLS handshakes
    connected = asyncio.Event()

    def on_version(i: int, version: str) -> None:
        acked[i] = version
        counts[version] = counts.get(version, 0) + 1
        if counts[version] == n:
            complete_at[version] = time.time()
            if version in waiting and not waiting[version].done():
                waiting[version].set_result(time.time())
            if len(acked) == n and not connected.is_set():
                connected.set()

    async def proxy(i: int) -> None:
        async with gate:
            ws = await connect("127.0.0.1", port, wire.PATH, ctx, server_hostname="localhost", timeout=60)
            token = tokens.mint(key, "perf", "sim", f"sim-{i}")
            await ws.send_text(wire.encode(wire.HELLO, token=token, pod=f"sim-{i}", namespace="perf",
                                           proxy_version="sim"))
        while True:
            try:
                data = await ws.recv()
            except WebSocketError:
                return
            m = _VERSION.match(data if isinstance(data, str) else "")
            if m:  # ACK without decoding: the measurement is about the control plane
                await ws.send_text(wire.encode(wire.ACK, version=m.group(1)))
                on_version(i, m.group(1))

    tasks = [asyncio.create_task(proxy(i)) for i in range(n)]
    started = time.time()
    await connected.wait()
    print(json.dumps({"event": "connected", "seconds": time.time() - started,
                      "version": next(iter(acked.values()))}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd, version = line.decode().split()
        if cmd == "expect":
            fut = waiting.setdefault(version, loop.create_future())
            if version in complete_at and not fut.done():
                fut.set_result(complete_at[version])
            done_at = await fut
            print(json.dumps({"event": "acked", "version": version, "at": done_at}), flush=True)
    for t in tasks:
        t.cancel()


# -- the driver (the parent process) ---------------------------------------------------------

def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def run_one(n: int, changes: int, services: int, tmp: Path) -> dict:
    mdir = tmp / f"manifests-{n}"
    mdir.mkdir()
    key = tokens.generate_key_file(tmp / f"token-{n}.key")
    write_atomic(mdir / "mesh.yaml", manifests(services, 80, 20))
    port, mport = free_port(), free_port()
    with open(tmp / f"control-{n}.log", "wb") as log:
        cp = subprocess.Popen(
                [str(BIN / "remora-control"), "--source", "files", "--dir", str(mdir), "--ca-dir", str(tmp / "ca"),
             "--token-key", str(tmp / f"token-{n}.key"), "--address", "127.0.0.1", "--port", str(port),
             "--monitoring-port", str(mport), "--log-level", "warning"],
            stderr=log, start_new_session=True,
        )
    sim = None
    try:
        monitoring = f"http://127.0.0.1:{mport}"
        for _ in range(200):
            try:
                urllib.request.urlopen(monitoring + "/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.5)
        rss_before = rss_kb(cp.pid)
        sim = subprocess.Popen(
            [sys.executable, __file__, "simulate", "--n", str(n), "--port", str(port),
             "--key", key.decode(), "--root", str(tmp / "ca" / "root-cert.pem")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )
        hello = json.loads(sim.stdout.readline())
        time.sleep(1.0)  # let buffers settle before reading RSS
        rss_after = rss_kb(cp.pid)
        status = get_json(monitoring + "/debug/proxies")["proxies"]
        assert len(status) == n, f"{len(status)} proxies connected, expected {n}"
        snapshot_bytes = len(urllib.request.urlopen(
            f"{monitoring}/debug/config?proxy=sim-0.perf", timeout=30).read())
        timings = []
        for c in range(changes):
            v1, v2 = 60 + c, 40 - c  # every change a new content, so a new version
            t0 = time.time()
            write_atomic(mdir / "mesh.yaml", manifests(services, v1, v2))
            # The new version is whatever the proxies get next: read it from the first ACK.
            version = _wait_new_version(monitoring, hello["version"])
            sim.stdin.write(f"expect {version}\n")
            sim.stdin.flush()
            done = json.loads(sim.stdout.readline())
            status = get_json(monitoring + "/debug/proxies")["proxies"]
            synced = sum(1 for p in status if p["status"] == "SYNCED" and p["acked_version"] == version)
            timings.append({"seconds": done["at"] - t0, "synced_on_control_plane": synced})
            hello["version"] = version
            time.sleep(0.5)
        secs = [t["seconds"] for t in timings]
        return {
            "proxies": n, "services": services, "snapshot_bytes": snapshot_bytes,
            "connect_all_seconds": round(hello["seconds"], 2),
            "control_plane_rss_mb_before": round(rss_before / 1024, 1),
            "control_plane_rss_mb_connected": round(rss_after / 1024, 1),
            "rss_kb_per_proxy": round((rss_after - rss_before) / n, 1),
            "change_to_all_acked_seconds": [round(s, 3) for s in secs],
            "median_seconds": round(statistics.median(secs), 3), "max_seconds": round(max(secs), 3),
            "all_synced_on_control_plane": all(t["synced_on_control_plane"] == n for t in timings),
        }
    finally:
        for p in (sim, cp):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()


def _wait_new_version(monitoring: str, old: str) -> str:
    deadline = time.time() + 60
    while time.time() < deadline:
        st = get_json(f"{monitoring}/debug/config?proxy=sim-0.perf")
        if st["sent_version"] and st["sent_version"] != old:
            return st["sent_version"]
        time.sleep(0.02)
    raise RuntimeError("the configuration change was never pushed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    sim = sub.add_parser("simulate")
    sim.add_argument("--n", type=int, required=True)
    sim.add_argument("--port", type=int, required=True)
    sim.add_argument("--key", required=True)
    sim.add_argument("--root", required=True)
    ap.add_argument("--proxies", default="100,1000,2000")
    ap.add_argument("--changes", type=int, default=5)
    ap.add_argument("--services", type=int, default=20)
    ap.add_argument("--out", type=Path, default=REPO / "perf" / "results" / "cp_scale.json")
    a = ap.parse_args()
    raise_fd_limit()
    if a.cmd == "simulate":
        import uvloop

        uvloop.run(simulate(a.n, a.port, a.key.encode(), a.root))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="remora-cp-scale-") as tmp:
        for n in (int(x) for x in a.proxies.split(",")):
            r = run_one(n, a.changes, a.services, Path(tmp))
            print(json.dumps(r), flush=True)
            results.append(r)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({
        "command": "perf/cp_scale.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} cores, {os.uname().release}",
        "note": "change time includes the files source poll (0.2 s) and debounce quiet (0.1 s); "
                "simulated proxies ACK without decoding; all in one 2-core machine",
        "results": results,
    }, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
