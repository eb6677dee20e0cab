"""What an idle proxy holds: the modules it loads and its resident memory.

Every replica of every meshed pod pays the proxy's idle RSS, so what a proxy that serves no
request yet does not need stays out of it (docs/proxy.md, "Idle memory")."""

from __future__ import annotations

import compileall
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mesh_harness import Mesh, Service

from control_plane.ca import CertificateAuthority
from sidecar.http import ngcodec
from sidecar.memtune import STARTED_TUNED

# Loaded only when needed: the CA and webhook libraries (the control plane's), YAML (non-JSON
# bootstraps), OpenTelemetry and the OTLP exporter (tracing on), the control-plane client
# (no --bootstrap), app probes, argparse (flags given) and what it pulls in, ctypes (the
# malloc tunables are set by exec instead), HTTP clients.
NEVER_IDLE = {"cryptography", "aiohttp", "yaml", "opentelemetry", "sidecar.otlp",
              "sidecar.discovery", "sidecar.app_health", "argparse", "shutil", "ctypes",
              "http.client", "tempfile"}
# The pure-Python HTTP/2 codec: only where it is the codec (the native one is not built).
H2_PURE = {"h2", "hpack", "hyperframe", "sidecar.http.h2codec"}

# The real entry point, as a pod runs it (no flags), with its ports moved to free ones so the
# test needs no network namespace; once started, it reports and stops.
IDLE_PROXY = """
import json, os, sys
from control_plane.api import ports
for name in ("ADMIN", "OUTBOUND", "INBOUND", "AGENT", "HEALTH", "METRICS", "DNS"):
    setattr(ports, name + "_PORT", 0)
from sidecar import __main__ as entry, runtime
start = runtime.ProxyRuntime.start
def heap_kb():
    with open("/proc/self/maps") as f:
        a, b = next(l.split()[0] for l in f if "[heap]" in l).split("-")
    return (int(b, 16) - int(a, 16)) // 1024
async def started(self):
    await start(self)
    modules = sorted(sys.modules)
    import ctypes  # after the module list: the check's own
    with open("/proc/self/maps") as f:
        lo, hi = (int(x, 16) for x in next(l.split()[0] for l in f if "[heap]" in l).split("-"))
    blocks = [bytearray(200_000) for _ in range(10)]  # below the mmap threshold: on the heap
    on_heap = 0
    for b in blocks:
        at = ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b))
        with open("/proc/self/maps") as f:
            top = int(next(l.split()[0] for l in f if "[heap]" in l).split("-")[1], 16)
        on_heap += lo <= at < top
    held = heap_kb()
    del b, blocks  # 2 MB free at the top of the heap: below the trim threshold, so kept
    print(json.dumps({"modules": modules, "heap": [on_heap, held, heap_kb()],
                      "env": {k: os.environ.get(k) for k in ("GLIBC_TUNABLES", "MARK")}}))
    self.stop(0)
runtime.ProxyRuntime.start = started
sys.exit(entry.main([]))
""".replace("MARK", STARTED_TUNED)


@pytest.fixture(scope="module")
def idle(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("idle")
    ca = CertificateAuthority.generate()
    key, chain = ca.issue("spiffe://cluster.local/ns/default/sa/idle")
    (d / "key.pem").write_bytes(key)
    (d / "chain.pem").write_bytes(chain)
    (d / "roots.pem").write_bytes(ca.root_pem)
    (d / "bootstrap.json").write_text(json.dumps({
        "config": {"version": "idle"},
        "tls": {"cert_chain": "chain.pem", "key": "key.pem", "roots": "roots.pem"}}))
    env = {"PATH": "/usr/bin:/bin", "REMORA_BOOTSTRAP": str(d / "bootstrap.json"),
           "REMORA_WORKDIR": str(d), "REMORA_RESOLV_CONF": str(d / "resolv.conf")}
    (d / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    r = subprocess.run([sys.executable, "-c", IDLE_PROXY], env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _loaded(modules: list[str], names: set[str]) -> list[str]:
    return sorted(m for m in modules if m in names or m.split(".")[0] in names)


def test_idle_proxy_loads_only_what_it_needs(idle):
    never = NEVER_IDLE | (H2_PURE if ngcodec.available() else set())
    assert _loaded(idle["modules"], never) == []
    assert "sidecar.runtime" in idle["modules"]  # it did run the proxy


def test_malloc_tunables_are_set_by_exec_and_not_passed_on(idle):
    # glibc's defaults would mmap each 200 kB block (outside the heap) and trim what is freed;
    # under the tunables the blocks come from the heap and the freed 2 MB stay in it.
    on_heap, held, after = idle["heap"]
    assert on_heap == 10 and after == held, idle["heap"]
    # The environment the proxy's children would get is the caller's again.
    assert idle["env"] == {"GLIBC_TUNABLES": None, STARTED_TUNED: None}


@pytest.mark.root
def test_idle_rss_of_a_meshed_proxy(node, bin_dir):
    # Bytecode as an image has it (the proxy's uid cannot write __pycache__; compiling every
    # module at start leaves about 3 MB more resident).
    repo = Path(ngcodec.__file__).parents[2]
    for package in ("sidecar", "control_plane"):
        compileall.compile_dir(repo / package, quiet=1)
    mesh = Mesh.start(node, bin_dir, [Service("web", 8080)])
    try:
        time.sleep(1.0)  # settled: start-up garbage collected
        for name, h in mesh.proxies.items():
            with open(f"/proc/{h.proc.pid}/status") as f:
                rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            # Measured 28.9-29.2 MB here (native codec, DNS proxy, telemetry on; 32.1 MB before
            # the idle-memory work); the bound is the issue's target.
            assert rss_kb <= 30 * 1024, f"{name} proxy idle RSS {rss_kb} kB" + mesh.logs()
    finally:
        mesh.close()
