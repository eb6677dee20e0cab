"""Workload TLS: contexts for the mTLS hop between sidecars, and reading the peer's identity.

ALPN on the sidecar hop names what is inside the tunnel (see docs/proxy.md):
``remora-h1``, ``remora-h2``, ``remora-tcp``. OpenSSL sets ALPN per context, so the client
side keeps one context per value. Contexts are immutable once built: a certificate rotation
builds a new ``TlsContexts`` and open connections keep the one they started with.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane.api.spiffe import spiffe_ids_of_peercert

ALPN_H1 = "remora-h1"
ALPN_H2 = "remora-h2"
ALPN_TCP = "remora-tcp"
REMORA_ALPNS = (ALPN_H1, ALPN_H2, ALPN_TCP)


@dataclass(frozen=True)
class TlsContexts:
    server: ssl.SSLContext
    clients: dict[str, ssl.SSLContext]  # by ALPN value
    identity: str  # our own SPIFFE ID (from the certificate)
    not_after: str  # certificate expiry as OpenSSL prints it


def _base(purpose: ssl.Purpose, cert: str, key: str, roots: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH
                         else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(roots)
    # Identity is a SPIFFE URI SAN, checked by us after the handshake; there is no hostname.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def build_contexts(cert: str, key: str, roots: str) -> TlsContexts:
    """Build every context from PEM files; ValueError with the file at fault on bad input."""
    for label, path in (("certificate chain", cert), ("key", key), ("trust roots", roots)):
        if not os.path.isfile(path):
            raise ValueError(f"{label} file {path} does not exist; check the bootstrap 'tls' section")
    try:
        server = _base(ssl.Purpose.CLIENT_AUTH, cert, key, roots)
        server.set_alpn_protocols(list(REMORA_ALPNS))
        clients = {}
        for alpn in REMORA_ALPNS:
            c = _base(ssl.Purpose.SERVER_AUTH, cert, key, roots)
            c.set_alpn_protocols([alpn])
            clients[alpn] = c
    except ssl.SSLError as e:
        raise ValueError(f"cannot load the workload certificate ({cert}, {key}, {roots}): {e}") from e
    info = _decode_cert(cert)
    ids = spiffe_ids_of_peercert(info)
    if not ids:
        raise ValueError(f"{cert}: the certificate has no spiffe:// URI SAN; it is not a workload cert")
    return TlsContexts(server, clients, ids[0], info.get("notAfter", ""))


def _decode_cert(path: str) -> dict[str, Any]:
    # CPython's test helper parses a PEM certificate into the getpeercert() dict without
    # importing cryptography; it reads the first certificate of the chain file.
    return ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined, no-any-return]


def peer_identity(ssl_object: ssl.SSLObject | None) -> str | None:
    """The peer's SPIFFE ID from a finished handshake, or None."""
    if ssl_object is None:
        return None
    ids = spiffe_ids_of_peercert(ssl_object.getpeercert())
    return ids[0] if ids else None


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable only by this uid (keys), replacing it atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def client_hello_extensions(data: bytes) -> dict[int, bytes] | None:
    """Extensions (type → body) of a TLS ClientHello at the start of ``data``; None when
    ``data`` is not (yet) a whole ClientHello record."""
    if len(data) < 5 or data[0] != 0x16 or data[1] != 0x03:
        return None
    rec_len = int.from_bytes(data[3:5], "big")
    body = data[5:5 + rec_len]
    if len(body) < rec_len or len(body) < 4 or body[0] != 0x01:
        return None
    out: dict[int, bytes] = {}
    try:
        i = 4 + 2 + 32  # handshake header, client version, random
        i += 1 + body[i]  # session id
        i += 2 + int.from_bytes(body[i:i + 2], "big")  # cipher suites
        i += 1 + body[i]  # compression methods
        end = i + 2 + int.from_bytes(body[i:i + 2], "big")
        i += 2
        while i + 4 <= end:
            etype = int.from_bytes(body[i:i + 2], "big")
            elen = int.from_bytes(body[i + 2:i + 4], "big")
            out.setdefault(etype, bytes(body[i + 4:i + 4 + elen]))
            i += 4 + elen
    except IndexError:
        pass
    return out


def client_hello_alpns(data: bytes) -> list[bytes] | None:
    """ALPN values offered in a TLS ClientHello at the start of ``data``.

    None when ``data`` is not (yet) a whole ClientHello record; [] when it is one without ALPN.
    Only what the PERMISSIVE listener needs to tell remora mTLS from app traffic.
    """
    exts = client_hello_extensions(data)
    if exts is None:
        return None
    ext = exts.get(16, b"")  # application_layer_protocol_negotiation
    out, j = [], 2
    while j < len(ext):
        n = ext[j]
        out.append(bytes(ext[j + 1:j + 1 + n]))
        j += 1 + n
    return out


def client_hello_sni(data: bytes) -> str:
    """The server_name (SNI) host of a ClientHello at the start of ``data``; "" if none."""
    ext = (client_hello_extensions(data) or {}).get(0, b"")
    # server_name_list length (2), then entries: type (1), length (2), name.
    if len(ext) < 5 or ext[2] != 0:
        return ""
    n = int.from_bytes(ext[3:5], "big")
    return ext[5:5 + n].decode("ascii", "replace")
