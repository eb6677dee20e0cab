"""SPIFFE identities, workload keys and CSRs: what a proxy needs without the CA's code.

The proxy makes its own key (it never leaves the pod) and a CSR naming the SPIFFE ID it asks
for; the control plane's CA decides whether the caller's token proves that identity.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from control_plane.api.ports import DEFAULT_TRUST_DOMAIN

_SPIFFE = re.compile(r"^spiffe://(?P<td>[a-z0-9._-]+)/ns/(?P<ns>[a-z0-9-]+)/sa/(?P<sa>[a-z0-9.-]+)$")


def spiffe_id(namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def parse_spiffe_id(uri: str) -> tuple[str, str, str]:
    """(trust_domain, namespace, service_account); ValueError when ``uri`` is not one."""
    m = _SPIFFE.match(uri)
    if not m:
        raise ValueError(f"{uri!r} is not a workload SPIFFE ID (spiffe://<td>/ns/<ns>/sa/<sa>)")
    return m["td"], m["ns"], m["sa"]


def spiffe_ids_of_peercert(peercert: dict | None) -> list[str]:
    """SPIFFE URIs from ``ssl.SSLSocket.getpeercert()`` (cheap: no certificate parsing)."""
    if not peercert:
        return []
    return [v for k, v in peercert.get("subjectAltName", ()) if k == "URI" and v.startswith("spiffe://")]


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
