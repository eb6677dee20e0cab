"""A real mesh for the telemetry tests: a real control plane and proxies made by cp_mesh."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from cp_mesh import CpMesh

from local_cluster import netns
from sidecar.tracing import Span

BIN = Path(sys.executable).parent  # the virtualenv's console scripts


@contextlib.contextmanager
def cp_mesh_on(node: netns.Node, **proxy_env: str) -> Iterator[CpMesh]:
    """A CpMesh on ``node``, every proxy started with ``proxy_env``; always torn down."""
    mesh = CpMesh.start(node, BIN)
    try:
        mesh.proxy_env = dict(proxy_env)
        yield mesh
    finally:
        mesh.close()


class SpanSink:
    """A tracing sink that keeps the finished spans (tests without an OTLP receiver)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def submit(self, span: Span, end_ns: int) -> None:
        self.spans.append(span)

    def set_service(self, name: str) -> None:
        pass

    def render(self) -> str:
        return ""
