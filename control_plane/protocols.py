"""A service port's protocol, chosen as Istio does: appProtocol first, else the port name prefix."""

from __future__ import annotations

from control_plane.api import model

# Server-first or binary protocols: relayed as opaque bytes, never sniffed.
_OPAQUE = ("mysql", "mongo", "redis", "smtp", "postgres", "postgresql", "amqp", "kafka", "nats", "zookeeper")
_BY_NAME = {
    "http": model.HTTP, "http2": model.HTTP2, "h2c": model.HTTP2, "kubernetes.io/h2c": model.HTTP2,
    "grpc": model.GRPC, "grpc-web": model.GRPC, "tcp": model.TCP, "tls": model.TLS,
    "https": model.TLS, "kubernetes.io/ws": model.HTTP, "kubernetes.io/wss": model.TLS,
    **{name: model.OPAQUE for name in _OPAQUE},
}


def port_protocol(name: str | None, app_protocol: str | None) -> str:
    """``appProtocol`` wins; else the name up to its first ``-`` ("http-web" → http); else tcp."""
    if app_protocol:
        known = _BY_NAME.get(app_protocol.lower())
        if known:
            return known
    if name:
        known = _BY_NAME.get(name.lower().split("-", 1)[0])
        if known:
            return known
    return model.TCP


def is_http(protocol: str) -> bool:
    return protocol in (model.HTTP, model.HTTP2, model.GRPC)
