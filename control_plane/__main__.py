"""Entry point of `remora-control`: configuration source, registry, CA and discovery server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import re
import resource
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from control_plane.api import model, tokens
from control_plane.api.ports import DEFAULT_TRUST_DOMAIN, DISCOVERY_PORT, MONITORING_PORT
from control_plane.rootcert import DEFAULT_EXCLUDED, RootCertPublisher

SERVICE_DNS = "remora-control.remora-system.svc"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
log = logging.getLogger("remora.control")


def parse_ttl(value: str) -> dt.timedelta:
    m = _DURATION.match(value)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration such as 24h, 90m or 20s")
    return dt.timedelta(seconds=float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="remora-control", description=__doc__)
    p.add_argument("--source", choices=("files", "kube"), default="files")
    p.add_argument("--dir", type=Path, help="manifest directory (--source files)")
    p.add_argument("--kubeconfig", help="kubeconfig file (--source kube; default: $KUBECONFIG, else in-cluster)")
    p.add_argument("--ca-dir", type=Path,
                   help="CA directory: loaded when it holds ca-key.pem, else a root is generated there")
    p.add_argument("--ca-secret", metavar="NAMESPACE/NAME",
                   help="kube mode: keep the CA in this Secret (loaded, or generated and created)")
    p.add_argument("--extra-roots", type=Path,
                   help="PEM file of further trusted roots sent in the trust bundle (root rotation)")
    p.add_argument("--token-key", type=Path, help="local mode: key file that verifies workload tokens")
    p.add_argument("--address", default="0.0.0.0", help="listen address")
    p.add_argument("--port", type=int, default=DISCOVERY_PORT)
    p.add_argument("--monitoring-address", default="127.0.0.1")
    p.add_argument("--monitoring-port", type=int, default=MONITORING_PORT)
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    p.add_argument("--root-namespace", default="remora-system",
                   help="PeerAuthentication here without a selector applies mesh-wide")
    p.add_argument("--mesh-mtls-mode", choices=model.MTLS_MODES, default=model.PERMISSIVE)
    p.add_argument("--debounce-quiet", type=float, default=0.1)
    p.add_argument("--debounce-max", type=float, default=10.0)
    p.add_argument("--keepalive", type=parse_ttl, default=dt.timedelta(seconds=30),
                   help="time between pings on each proxy's discovery stream (default 30s)")
    p.add_argument("--cert-ttl", type=parse_ttl, default=dt.timedelta(hours=24))
    p.add_argument("--serving-ip", action="append", default=[],
                   help="extra IP SAN of the serving certificate (the pod IP); repeatable")
    p.add_argument("--root-cert-excluded-namespaces", default=",".join(DEFAULT_EXCLUDED),
                   metavar="NS,NS...",
                   help="kube mode: namespaces that get no remora-ca-root-cert ConfigMap "
                        f"(default {','.join(DEFAULT_EXCLUDED)}; '' for none)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--revision", default="default",
                   help="revision served (remora.dev/rev); adds remora-control-REV to the serving names")
    args = p.parse_args(argv)
    if args.source == "files" and args.dir is None:
        p.error("--source files needs --dir DIR")
    if (args.ca_dir is None) == (args.ca_secret is None):
        p.error("give exactly one of --ca-dir DIR or --ca-secret NAMESPACE/NAME")
    if args.ca_secret and args.source != "kube":
        p.error("--ca-secret needs --source kube (it lives on the API server)")
    if args.source == "files" and args.token_key is None:
        p.error("--source files (local mode) needs --token-key FILE to verify workload tokens")
    return args


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _serving_ssl(ca, ips: list[str], workdir: Path, revision: str = "default") -> ssl.SSLContext:
    from control_plane.ca import issue_serving_cert

    names = [SERVICE_DNS, SERVICE_DNS + ".cluster.local", "remora-control", "localhost"]
    if revision != "default":  # the chart's revisioned Service: remora-control-<rev>
        svc = f"remora-control-{revision}"
        names += [svc, SERVICE_DNS.replace("remora-control", svc, 1),
                  SERVICE_DNS.replace("remora-control", svc, 1) + ".cluster.local"]
    key_pem, chain_pem = issue_serving_cert(ca, names, ["127.0.0.1", "::1", *ips])
    (workdir / "key.pem").write_bytes(key_pem)
    (workdir / "chain.pem").write_bytes(chain_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(workdir / "chain.pem", workdir / "key.pem")
    return ctx


async def serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    from control_plane.auth import LocalTokenAuthenticator, TokenReviewAuthenticator
    from control_plane.ca import CertificateAuthority
    from control_plane.server import DiscoveryServer, ServerSettings

    if args.source == "files":
        from control_plane.sources.files import FilesSource

        source: FilesSource | KubeSource = FilesSource(args.dir)
    else:
        from control_plane.sources.kube import KubeSource, api_client

        client = api_client(args.kubeconfig)
        source = KubeSource(client)
    if args.ca_secret:
        from control_plane.ca_secret import load_or_create, parse_secret_ref

        ca = load_or_create(client, *parse_secret_ref(args.ca_secret), args.trust_domain)
    else:
        ca = CertificateAuthority.load_or_generate(args.ca_dir, args.trust_domain)
    bundle = ca.root_pem.decode()
    if args.extra_roots:
        bundle += args.extra_roots.read_text()
    if args.token_key:
        auth: LocalTokenAuthenticator | TokenReviewAuthenticator = LocalTokenAuthenticator(
            tokens.load_key(args.token_key))
    else:
        auth = TokenReviewAuthenticator(client)
    settings = ServerSettings(
        trust_domain=args.trust_domain, cert_ttl=args.cert_ttl, root_namespace=args.root_namespace,
        mesh_mtls_mode=args.mesh_mtls_mode, debounce_quiet=args.debounce_quiet,
        debounce_max=args.debounce_max, revision=args.revision,
        keepalive=args.keepalive.total_seconds(),
    )
    server = DiscoveryServer(ca, auth, source, settings, bundle)
    with tempfile.TemporaryDirectory(prefix="remora-control-") as tmp:
        ips = list(args.serving_ip)
        with contextlib.suppress(OSError):
            ips.append(socket.gethostbyname(socket.gethostname()))
        ctx = _serving_ssl(ca, sorted(set(ips)), Path(tmp), args.revision)
        runners = []
        for app, host, port, tls in (
            (server.discovery_app(), args.address, args.port, ctx),
            (server.monitoring_app(), args.monitoring_address, args.monitoring_port, None),
        ):
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, host, port, ssl_context=tls, backlog=4096).start()
            runners.append(runner)
        log.info("remora-control: discovery+CA on %s:%d (TLS), monitoring on %s:%d, source %s",
                 args.address, args.port, args.monitoring_address, args.monitoring_port, args.source)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(server.run_source()), asyncio.create_task(server.debouncer.run())]
        if args.source == "kube":  # injected pods mount the roots from a ConfigMap in their namespace
            excluded = [n.strip() for n in args.root_cert_excluded_namespaces.split(",") if n.strip()]
            tasks.append(asyncio.create_task(RootCertPublisher(client, bundle, excluded).run()))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for t in [*tasks, stopper]:
            t.cancel()
        for runner in runners:
            await runner.cleanup()
        for t in done:
            if t is not stopper and t.exception():
                raise t.exception()  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _raise_fd_limit()
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve(args))
    except (ValueError, OSError) as exc:
        print(f"remora-control: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
