"""The CA: signs only the proven identity, and its certificates work in a real mTLS handshake."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from control_plane.api import identity as ident
from control_plane.ca import CertificateAuthority, CSRRefused

A = ident.spiffe_id("default", "a")
B = ident.spiffe_id("default", "b")


@pytest.fixture(scope="module", params=[False, True], ids=["root", "intermediate"])
def ca(request) -> CertificateAuthority:
    return CertificateAuthority.generate(intermediate=request.param)


def test_signs_the_proven_identity(ca: CertificateAuthority) -> None:
    key = ident.generate_key()
    chain = ca.sign_csr(ident.make_csr(key, A), A, ttl=dt.timedelta(seconds=20))
    leaf = x509.load_pem_x509_certificates(chain)[0]
    assert ident.spiffe_ids_of_cert(leaf) == [A]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime <= dt.timedelta(minutes=5, seconds=21)


def test_refuses_another_identity(ca: CertificateAuthority) -> None:
    csr = ident.make_csr(ident.generate_key(), B)
    with pytest.raises(CSRRefused, match="asks for .*sa/b.* but the token proves .*sa/a"):
        ca.sign_csr(csr, A)


def test_refuses_garbage_and_foreign_trust_domain(ca: CertificateAuthority) -> None:
    with pytest.raises(CSRRefused, match="malformed CSR"):
        ca.sign_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", A)
    other = ident.spiffe_id("default", "a", trust_domain="evil.example")
    with pytest.raises(CSRRefused, match="outside trust domain"):
        ca.sign_csr(ident.make_csr(ident.generate_key(), other), other)


def test_save_and_load(tmp_path: Path, ca: CertificateAuthority) -> None:
    ca.save(tmp_path)
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    again = CertificateAuthority.load(tmp_path)
    assert again.root_pem == ca.root_pem
    (tmp_path / "ca-key.pem").write_bytes(ident.key_to_pem(ident.generate_key()))
    with pytest.raises(ValueError, match="does not match"):
        CertificateAuthority.load(tmp_path)


def test_mutual_tls_handshake_carries_spiffe_ids(tmp_path: Path, ca: CertificateAuthority) -> None:
    def ctx(side: int, identity: str) -> ssl.SSLContext:
        key, chain = ca.issue(identity)
        (tmp_path / f"{side}.key").write_bytes(key)
        (tmp_path / f"{side}.pem").write_bytes(chain)
        c = ssl.SSLContext(side)
        c.load_cert_chain(tmp_path / f"{side}.pem", tmp_path / f"{side}.key")
        c.load_verify_locations(cadata=ca.root_pem.decode())
        c.verify_mode = ssl.CERT_REQUIRED
        c.check_hostname = False
        return c

    server_ctx, client_ctx = ctx(ssl.PROTOCOL_TLS_SERVER, B), ctx(ssl.PROTOCOL_TLS_CLIENT, A)
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[list[str]] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            seen.append(ident.spiffe_ids_of_peercert(tls.getpeercert()))
            tls.sendall(b"ok")

    t = threading.Thread(target=serve)
    t.start()
    with client_ctx.wrap_socket(socket.create_connection(listener.getsockname())) as tls:
        assert ident.spiffe_ids_of_peercert(tls.getpeercert()) == [B]
        assert tls.recv(2) == b"ok"
    t.join(5)
    listener.close()
    assert seen == [[A]]
