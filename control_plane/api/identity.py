"""Workload keys and CSRs (cryptography): what a proxy needs from the CA's side of things.

Imports cryptography (~10 MB of RSS): the proxy process itself must not import this module;
it makes its key and CSR in a short-lived child process.

The proxy makes its own key (it never leaves the pod) and a CSR naming the SPIFFE ID it asks
for; the control plane's CA decides whether the caller's token proves that identity.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from control_plane.api.spiffe import parse_spiffe_id, spiffe_id, spiffe_ids_of_peercert

__all__ = [
    "generate_key", "key_to_pem", "make_csr", "parse_spiffe_id", "spiffe_id",
    "spiffe_ids_of_cert", "spiffe_ids_of_peercert",
]


def spiffe_ids_of_cert(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A workload key: ECDSA P-256."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_csr(key: ec.EllipticCurvePrivateKey, identity: str) -> bytes:
    """A PEM CSR asking for ``identity`` as its only URI SAN."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "remora")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)
