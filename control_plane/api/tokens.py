"""Local-mode workload tokens: HMAC-SHA256 signed, compact, standard library only.

The local cluster mints one token per pod with a key file that the control plane also reads
(``remora-control --token-key FILE``); the proxy sends it with its CSR and the control plane
verifies it. The format is JWT-like (``header.claims.signature``, base64url, no padding) so
that it reads familiar in logs, but only HS256 with the shared key is accepted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from control_plane.api.ports import CA_TOKEN_AUDIENCE

_HEADER = {"alg": "HS256", "typ": "remora-token"}
DEFAULT_TOKEN_TTL = 24 * 3600
MIN_KEY_BYTES = 32


class TokenError(ValueError):
    """The token cannot be accepted; the message says why (expired, forged, wrong audience...)."""


@dataclass(frozen=True, slots=True)
class Claims:
    namespace: str
    service_account: str
    pod: str
    audience: str
    expires: int  # unix seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, signing_input: str) -> str:
    return _b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def mint(
    key: bytes,
    namespace: str,
    service_account: str,
    pod: str,
    audience: str = CA_TOKEN_AUDIENCE,
    ttl: int = DEFAULT_TOKEN_TTL,
    now: float | None = None,
) -> str:
    """A signed token proving (namespace, service account, pod) for ``audience``."""
    issued = int(time.time() if now is None else now)
    claims = {
        "ns": namespace, "sa": service_account, "pod": pod, "aud": audience,
        "iat": issued, "exp": issued + ttl,
    }
    head = _b64(json.dumps(_HEADER, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{head}.{body}.{_sign(key, f'{head}.{body}')}"


def verify(key: bytes, token: str, audience: str = CA_TOKEN_AUDIENCE, now: float | None = None) -> Claims:
    """The token's claims; TokenError when it is malformed, forged, expired or for another audience."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise TokenError("malformed token: expected header.claims.signature")
    head, body, sig = parts
    if not hmac.compare_digest(_sign(key, f"{head}.{body}"), sig):
        raise TokenError("token signature is invalid (forged, or minted with another key)")
    try:
        header = json.loads(_unb64(head))
        claims = json.loads(_unb64(body))
    except ValueError:
        raise TokenError("malformed token: header or claims are not base64url JSON") from None
    if header != _HEADER:
        raise TokenError(f"unsupported token header {header!r}")
    try:
        out = Claims(
            str(claims["ns"]), str(claims["sa"]), str(claims["pod"]), str(claims["aud"]),
            int(claims["exp"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenError(f"malformed token claims: missing or bad {exc}") from None
    if out.audience != audience:
        raise TokenError(f"token audience is {out.audience!r}, expected {audience!r}")
    if out.expires <= (time.time() if now is None else now):
        raise TokenError(f"token expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(out.expires))}")
    return out


def generate_key_file(path: Path) -> bytes:
    """Write a new random key (hex, mode 0600) to ``path`` and return it."""
    key = os.urandom(MIN_KEY_BYTES).hex().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def load_key(path: Path) -> bytes:
    """The key in ``path`` (whitespace stripped); ValueError naming the file when unusable."""
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read token key {path}: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"token key {path} is too short: use at least {MIN_KEY_BYTES} bytes")
    return key
