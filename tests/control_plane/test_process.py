"""The real remora-control process on loopback: flags, persisted CA, extra roots in the trust
bundle, a proxy served end to end, and a prompt exit on SIGTERM with proxies connected."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from cp_harness import BASE, TOKEN_KEY, FakeRuntime

from control_plane.api import tokens
from control_plane.ca import CertificateAuthority
from sidecar.discovery import DiscoveryClient, DiscoverySettings

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(url: str, proc: subprocess.Popen) -> None:
    for _ in range(200):
        assert proc.poll() is None, "remora-control exited"
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1)
            return
        await asyncio.sleep(0.05)
    raise AssertionError("remora-control never became ready")


async def test_process_serves_a_proxy_and_persists_its_ca(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "base.yaml").write_text(BASE)
    (tmp_path / "key").write_bytes(TOKEN_KEY)
    other_root = CertificateAuthority.generate().root_pem
    (tmp_path / "extra.pem").write_bytes(other_root)
    port, mport = free_port(), free_port()
    argv = [str(BIN / "remora-control"), "--dir", str(tmp_path / "m"), "--ca-dir", str(tmp_path / "ca"),
            "--token-key", str(tmp_path / "key"), "--address", "127.0.0.1", "--port", str(port),
            "--monitoring-port", str(mport), "--extra-roots", str(tmp_path / "extra.pem")]
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen(argv, stderr=log, start_new_session=True)
    task = None
    try:
        await wait_ready(f"http://127.0.0.1:{mport}/ready", proc)
        root = (tmp_path / "ca" / "root-cert.pem").read_bytes()
        (tmp_path / "token").write_text(tokens.mint(TOKEN_KEY, "shop", "reviews", "reviews-v1"))
        settings = DiscoverySettings(
            host="127.0.0.1", port=port, pod="reviews-v1", namespace="shop", pod_ip="198.18.0.21",
            service_account="reviews", token_file=tmp_path / "token",
            trust_root=tmp_path / "ca" / "root-cert.pem", workdir=tmp_path / "work")
        rt = FakeRuntime()
        client = DiscoveryClient(rt, settings)
        task = asyncio.create_task(client.run())
        for _ in range(200):
            if rt.configs and rt.certs:
                break
            await asyncio.sleep(0.05)
        assert rt.configs and rt.certs
        # Both roots travel with the certificate and in the snapshot: roots can rotate.
        assert rt.certs[0][2] == root + other_root
        assert rt.configs[0].trust_bundle == (root + other_root).decode()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0  # connected proxies do not hold up the shutdown
        # The generated CA was persisted: the next start on this --ca-dir loads the same root.
        assert CertificateAuthority.load(tmp_path / "ca").root_pem == root
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "discovery+CA on 127.0.0.1" in (tmp_path / "log").read_text()
