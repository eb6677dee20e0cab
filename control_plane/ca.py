"""The mesh CA: a root (generated or loaded), an optional intermediate, SPIFFE workload certs.

The CA signs a CSR only for the identity the caller proved (the discovery server checks the
workload token first and passes that identity here); a CSR asking for anything else is refused.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control_plane.api import identity as ident

WORKLOAD_TTL = dt.timedelta(hours=24)
ROOT_TTL = dt.timedelta(days=3650)
INTERMEDIATE_TTL = dt.timedelta(days=365)
CLOCK_SKEW = dt.timedelta(minutes=5)  # backdate notBefore so a peer's slightly slow clock agrees


class CSRRefused(ValueError):
    """The CSR cannot be signed; the message says why (logged, counted, sent to the proxy)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "remora"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _ca_cert(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    ttl: dt.timedelta,
    path_length: int | None,
) -> x509.Certificate:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(signer, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class CertificateAuthority:
    """Signs workload certificates with ``signing_key``/``signing_cert`` (root or intermediate)."""

    trust_domain: str
    root_cert: x509.Certificate
    signing_cert: x509.Certificate
    signing_key: ec.EllipticCurvePrivateKey
    # Certificates between the signing cert and the root (excluded), sent with each leaf.
    chain: tuple[x509.Certificate, ...] = ()
    root_key: ec.EllipticCurvePrivateKey | None = None

    @classmethod
    def generate(cls, trust_domain: str = "cluster.local", intermediate: bool = False) -> CertificateAuthority:
        root_key = ident.generate_key()
        root_name = _name(f"Remora root CA ({trust_domain})")
        root = _ca_cert(root_name, root_name, root_key.public_key(), root_key, ROOT_TTL, None)
        if not intermediate:
            return cls(trust_domain, root, root, root_key, (), root_key)
        key = ident.generate_key()
        inter = _ca_cert(
            _name(f"Remora intermediate CA ({trust_domain})"), root_name, key.public_key(), root_key,
            INTERMEDIATE_TTL, 0,
        )
        return cls(trust_domain, root, inter, key, (inter,), root_key)

    @property
    def root_pem(self) -> bytes:
        return pem(self.root_cert)

    def save(self, directory: Path) -> None:
        """root-cert.pem, ca-cert.pem, ca-key.pem (0600), cert-chain.pem (intermediates)."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "root-cert.pem").write_bytes(self.root_pem)
        (directory / "ca-cert.pem").write_bytes(pem(self.signing_cert))
        (directory / "cert-chain.pem").write_bytes(b"".join(pem(c) for c in self.chain))
        key_path = directory / "ca-key.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(ident.key_to_pem(self.signing_key))

    @classmethod
    def load(cls, directory: Path, trust_domain: str = "cluster.local") -> CertificateAuthority:
        """Load what ``save`` wrote (or an operator-provided CA in the same layout)."""
        try:
            root = x509.load_pem_x509_certificate((directory / "root-cert.pem").read_bytes())
            signing = x509.load_pem_x509_certificate((directory / "ca-cert.pem").read_bytes())
            key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
            chain_path = directory / "cert-chain.pem"
            chain = tuple(x509.load_pem_x509_certificates(chain_path.read_bytes())) if (
                chain_path.exists() and chain_path.stat().st_size
            ) else ()
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load the CA from {directory}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory}/ca-key.pem: the CA key must be an EC key")
        if key.public_key().public_numbers() != signing.public_key().public_numbers():  # type: ignore[union-attr]
            raise ValueError(f"{directory}: ca-key.pem does not match ca-cert.pem")
        return cls(trust_domain, root, signing, key, chain)

    @classmethod
    def load_or_generate(cls, directory: Path, trust_domain: str = "cluster.local") -> CertificateAuthority:
        """Load the CA persisted in ``directory``, or generate and persist a new root there."""
        if (directory / "ca-key.pem").exists():
            return cls.load(directory, trust_domain)
        ca = cls.generate(trust_domain)
        ca.save(directory)
        return ca

    def sign_csr(self, csr_pem: bytes, identity: str, ttl: dt.timedelta = WORKLOAD_TTL) -> bytes:
        """Sign ``csr_pem`` for ``identity`` (already proven by the caller's token).

        Returns the PEM chain: leaf, then intermediates. Raises CSRRefused with the reason.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CSRRefused(f"malformed CSR: {exc}") from None
        try:
            if not csr.is_signature_valid:
                raise CSRRefused("CSR signature is invalid")
        except InvalidSignature:
            raise CSRRefused("CSR signature is invalid") from None
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise CSRRefused("CSR key must be ECDSA P-256")
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            asked = san.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            asked = []
        if asked != [identity]:
            raise CSRRefused(f"CSR asks for {asked or 'no identity'} but the token proves {identity}")
        td, _, _ = ident.parse_spiffe_id(identity)
        if td != self.trust_domain:
            raise CSRRefused(f"identity {identity} is outside trust domain {self.trust_domain}")
        return self._issue(key, identity, ttl)

    def issue(self, identity: str, ttl: dt.timedelta = WORKLOAD_TTL) -> tuple[bytes, bytes]:
        """(key PEM, chain PEM) for ``identity``: for tests and static bootstraps only."""
        key = ident.generate_key()
        return ident.key_to_pem(key), self._issue(key.public_key(), identity, ttl)

    def _issue(self, public_key: ec.EllipticCurvePublicKey, identity: str, ttl: dt.timedelta) -> bytes:
        now = _now()
        not_after = min(now + ttl, self.signing_cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "remora")]))
            .issuer_name(self.signing_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=True, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True
            )
            .add_extension(self._authority_key_id(), critical=False)
            .sign(self.signing_key, hashes.SHA256())
        )
        return pem(cert) + b"".join(pem(c) for c in self.chain)

    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        """Copy the issuer's own key identifier: a CA made elsewhere (Helm, an operator's PKI)
        may derive it differently from SHA-1, and OpenSSL matches issuers by this value."""
        try:
            ski = self.signing_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.signing_key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def issue_serving_cert(
    ca: CertificateAuthority, dns_names: list[str], ips: list[str], ttl: dt.timedelta = INTERMEDIATE_TTL
) -> tuple[bytes, bytes]:
    """(key PEM, chain PEM) for the control plane's own TLS server (DNS and IP SANs)."""
    import ipaddress

    key = ident.generate_key()
    now = _now()
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0] if dns_names else "remora-control"))
        .issuer_name(ca.signing_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + ttl, ca.signing_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca.signing_key, hashes.SHA256())
    )
    return ident.key_to_pem(key), pem(cert) + b"".join(pem(c) for c in ca.chain)
