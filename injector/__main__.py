"""Entry point of ``remora-injector``: the mutating admission webhook for Pod CREATE.

    remora-injector [--port 9443] [--certfile F --keyfile F | --self-signed-dir DIR]
                    [--mesh-config FILE] [--webhook-config NAME | --no-webhook-config]
                    [--without-api-server [--namespaces FILE]]

With an API server (in-cluster or kubeconfig) it runs as a kopf operator; with
``--without-api-server`` (the local cluster) it serves the same decision with no operator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from pathlib import Path

import kopf

from control_plane.api.ports import MONITORING_PORT, WEBHOOK_PORT
from injector import certs, meshconfig
from injector.metrics import serve_metrics
from injector.reviews import CheckedWebhookServer
from injector.service import Injector, NamespaceFile, operator_registry, standalone_webhook
from injector.template import version_info

log = logging.getLogger("remora.injector")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="remora-injector", description=__doc__.split("\n")[0])
    p.add_argument("--addr", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=WEBHOOK_PORT, help=f"HTTPS port (default {WEBHOOK_PORT})")
    p.add_argument("--host", default=f"{certs.SERVICE}.{certs.NAMESPACE}.svc",
                   help="host name the API server uses to reach the webhook")
    p.add_argument("--certfile", help="serving certificate (PEM); needs --keyfile")
    p.add_argument("--keyfile", help="serving key (PEM)")
    p.add_argument("--cafile", help="CA bundle for the webhook's caBundle (default: --certfile)")
    p.add_argument("--self-signed-dir", help="where to write the generated ca.crt/tls.crt/tls.key")
    p.add_argument("--extra-san", action="append", default=[], help="extra SAN for the generated cert")
    p.add_argument("--mesh-config", help="mesh defaults: YAML file or ConfigMap (see docs/injection.md)")
    p.add_argument("--metrics-addr", default="0.0.0.0")
    p.add_argument("--metrics-port", type=int, default=MONITORING_PORT,
                   help=f"Prometheus /metrics port (default {MONITORING_PORT}; 0 turns it off)")
    p.add_argument("--webhook-config", default="remora-injector",
                   help="MutatingWebhookConfiguration that kopf keeps pointed at this server")
    p.add_argument("--no-webhook-config", action="store_true",
                   help="leave the webhook configuration to the chart")
    p.add_argument("--without-api-server", action="store_true",
                   help="serve the webhook alone (local cluster): no kopf operator, no API server")
    p.add_argument("--namespaces", help="with --without-api-server: YAML of Namespace objects (labels)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if bool(args.certfile) != bool(args.keyfile):
        p.error("--certfile and --keyfile go together; give both, or neither to generate them")
    if args.certfile and args.self_signed_dir:
        p.error("--self-signed-dir generates a certificate; do not combine it with --certfile")
    return args


def webhook_server(args: argparse.Namespace) -> kopf.WebhookServer:
    if args.certfile:
        cert, key, ca = Path(args.certfile), Path(args.keyfile), Path(args.cafile or args.certfile)
    else:
        directory = args.self_signed_dir or tempfile.mkdtemp(prefix="remora-injector-")
        sans = list(dict.fromkeys([args.host, *certs.default_sans(), *args.extra_san]))
        files = certs.generate(directory, sans)
        cert, key, ca = files.cert, files.key, files.ca
        log.info("generated a webhook certificate; CA bundle for caBundle: %s", ca)
    return CheckedWebhookServer(addr=args.addr, port=args.port, host=args.host,
                                certfile=cert, pkeyfile=key, cafile=ca)


async def serve(args: argparse.Namespace) -> None:
    mesh = meshconfig.load(args.mesh_config)
    injector = Injector(mesh)
    server = webhook_server(args)
    metrics = None
    if args.metrics_port:
        metrics = await serve_metrics(injector.counters, args.metrics_addr, args.metrics_port,
                                      version_info(mesh))
    try:
        if args.without_api_server:
            fn = standalone_webhook(injector, NamespaceFile(args.namespaces))
            async for config in server(fn):
                log.info("serving the webhook at %s (no API server)", config.get("url"))
        else:
            managed = None if args.no_webhook_config else args.webhook_config
            registry = operator_registry(injector, server, managed)
            await kopf.operator(registry=registry, clusterwide=True, standalone=True)
    finally:
        if metrics is not None:
            await metrics.cleanup()
        log.info("stopped; totals: %s", injector.counters.summary())


async def _main(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    if args.without_api_server:  # kopf installs its own signal handlers otherwise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve(args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_main(args))
    except meshconfig.MeshConfigError as e:
        print(f"remora-injector: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
