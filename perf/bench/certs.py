"""Certificates for the HAProxy reference pair: DNS-named, unlike the mesh's SPIFFE ones."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control_plane.api import identity as ident
from control_plane.ca import CertificateAuthority, pem


def haproxy_pems(ca: CertificateAuthority, directory: Path) -> dict[str, Path]:
    """ca.crt, server.pem (SAN DNS:server.bench) and client.pem (clientAuth): cert + key each."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {"ca": directory / "ca.crt"}
    out["ca"].write_bytes(ca.root_pem)
    for name, eku in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ident.generate_key()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}.bench")]))
            .issuer_name(ca.signing_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{name}.bench")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .sign(ca.signing_key, hashes.SHA256())
        )
        path = directory / f"{name}.pem"
        path.write_bytes(pem(cert) + ident.key_to_pem(key))
        out[name] = path
    return out
