"""A revisioned control plane (``--revision canary``) is reachable under the chart's revisioned
Service name: a proxy verifying ``remora-control-canary.remora-system.svc`` accepts it."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from control_plane.__main__ import _serving_ssl, parse_args
from control_plane.ca import CertificateAuthority


def test_revision_names_are_in_the_serving_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority.generate()
    _serving_ssl(ca, [], tmp_path, "canary")
    leaf = x509.load_pem_x509_certificates((tmp_path / "chain.pem").read_bytes())[0]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert {"remora-control-canary", "remora-control-canary.remora-system.svc",
            "remora-control-canary.remora-system.svc.cluster.local", "remora-control.remora-system.svc"} <= set(names)
    default = tmp_path / "default"
    default.mkdir()
    _serving_ssl(ca, [], default, "default")
    leaf = x509.load_pem_x509_certificates((default / "chain.pem").read_bytes())[0]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert not [n for n in names if "canary" in n]
    assert parse_args(["--dir", "x", "--ca-dir", "y", "--token-key", "k", "--revision", "canary"]).revision == "canary"
