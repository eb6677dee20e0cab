"""Wire messages of the discovery stream (WebSocket text frames, one JSON object each).

Standard library only: the proxy imports this. docs/discovery-protocol.md describes the
handshake; the order is hello → welcome, csr → certificate, then snapshot ↔ ack/nack for as
long as the stream lives (the proxy sends a new csr whenever it renews its certificate).
"""

from __future__ import annotations

import json
from typing import Any

PROTOCOL_VERSION = 1
PATH = "/v1/discovery"

# proxy → control plane
HELLO = "hello"  # token, pod, namespace, proxy_version, [template_hash], [ip], [last_version]
CSR = "csr"  # request_id, csr (PEM)
ACK = "ack"  # version, [ignored] (snapshot fields this proxy does not know, reported once)
NACK = "nack"  # version, reason
# control plane → proxy
WELCOME = "welcome"  # proxy_id, identity, protocol, [server_version]
CERTIFICATE = "certificate"  # request_id, chain (PEM: leaf then intermediates), roots (PEM), not_after
SNAPSHOT = "snapshot"  # version, config (ProxyConfig.to_dict())
ERROR = "error"  # reason, [request_id], fatal (bool: the server closes the stream after it)

CLIENT_TYPES = (HELLO, CSR, ACK, NACK)
SERVER_TYPES = (WELCOME, CERTIFICATE, SNAPSHOT, ERROR)

_REQUIRED: dict[str, tuple[str, ...]] = {
    HELLO: ("token", "pod", "namespace", "proxy_version"),
    CSR: ("request_id", "csr"),
    ACK: ("version",),
    NACK: ("version", "reason"),
    WELCOME: ("proxy_id", "identity", "protocol"),
    CERTIFICATE: ("request_id", "chain", "roots", "not_after"),
    SNAPSHOT: ("version", "config"),
    ERROR: ("reason", "fatal"),
}


# Compatibility: a message may carry fields its receiver does not know (a newer peer's); the
# receiver ignores them. Fields are only ever added, as optional ones; required ones never change.


class ProtocolError(ValueError):
    """A message is not valid JSON, has an unknown type or lacks a field; says which."""


def encode(kind: str, **fields: Any) -> str:
    """One message as a JSON text frame."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def decode(text: str | bytes, allowed: tuple[str, ...]) -> dict[str, Any]:
    """Parse one frame and check its type is in ``allowed`` and its required fields are there."""
    try:
        msg = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"message is not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("message must be a JSON object")
    kind = msg.get("type")
    if kind not in allowed:
        raise ProtocolError(f"unexpected message type {kind!r}; expected one of {', '.join(allowed)}")
    missing = [f for f in _REQUIRED[kind] if f not in msg]
    if missing:
        raise ProtocolError(f"{kind} message lacks field {missing[0]!r}")
    return msg


def proxy_id(pod: str, namespace: str) -> str:
    """How proxies are named in status and in ``remoractl proxy-config``: ``<pod>.<namespace>``."""
    return f"{pod}.{namespace}"
