"""Local-mode workload tokens: what verifies, and the clear reason for what does not."""

from __future__ import annotations

import time

import pytest

from control_plane.api import tokens

KEY = b"k" * 32


def test_round_trip() -> None:
    tok = tokens.mint(KEY, "shop", "reviews", "reviews-v1")
    c = tokens.verify(KEY, tok)
    assert (c.namespace, c.service_account, c.pod, c.audience) == ("shop", "reviews", "reviews-v1", "remora-ca")


@pytest.mark.parametrize(("token", "reason"), [
    (tokens.mint(KEY, "shop", "a", "p", ttl=10, now=time.time() - 60), "token expired at"),
    (tokens.mint(b"x" * 32, "shop", "a", "p"), "signature is invalid"),
    (tokens.mint(KEY, "shop", "a", "p", audience="kubernetes"), "audience is 'kubernetes'"),
    ("not-a-token", "malformed token"),
])
def test_refused_with_reason(token: str, reason: str) -> None:
    with pytest.raises(tokens.TokenError, match=reason):
        tokens.verify(KEY, token)


def test_tampered_claims_are_forged() -> None:
    head, body, sig = tokens.mint(KEY, "shop", "a", "p").split(".")
    other = tokens.mint(KEY, "shop", "admin", "p").split(".")[1]
    with pytest.raises(tokens.TokenError, match="signature is invalid"):
        tokens.verify(KEY, f"{head}.{other}.{sig}")


def test_key_file(tmp_path) -> None:
    path = tmp_path / "token.key"
    key = tokens.generate_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert tokens.load_key(path) == key
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ValueError, match="too short"):
        tokens.load_key(tmp_path / "short")
