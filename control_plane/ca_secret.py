"""Keep the CA in a Kubernetes Secret (kube mode): load it, or generate it and create the Secret.

The Secret holds the same files as ``--ca-dir`` (root-cert.pem, ca-cert.pem, ca-key.pem,
cert-chain.pem). When two replicas start at once, the second one's create fails with 409 and it
loads what the first one stored, so both serve the same root.
"""

from __future__ import annotations

import base64
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from control_plane.ca import CertificateAuthority

log = logging.getLogger("remora.control.ca")
FILES = ("root-cert.pem", "ca-cert.pem", "ca-key.pem", "cert-chain.pem")


def parse_secret_ref(value: str) -> tuple[str, str]:
    ns, sep, name = value.partition("/")
    if not sep or not ns or not name:
        raise ValueError(f"--ca-secret {value!r}: expected NAMESPACE/NAME")
    return ns, name


def _load_from(data: Mapping[str, bytes | str], trust_domain: str) -> CertificateAuthority:
    with tempfile.TemporaryDirectory(prefix="remora-ca-") as tmp:
        for name in FILES:
            Path(tmp, name).write_bytes(base64.b64decode(data.get(name, "")))
        return CertificateAuthority.load(Path(tmp), trust_domain)


def load_or_create(api_client: Any, namespace: str, name: str, trust_domain: str) -> CertificateAuthority:
    """The CA stored in Secret ``namespace/name``; generated and stored there when absent."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    try:
        secret = core.read_namespaced_secret(name, namespace)
        log.info("CA loaded from Secret %s/%s", namespace, name)
        return _load_from(secret.data or {}, trust_domain)
    except ApiException as exc:
        if exc.status != 404:
            raise ValueError(f"cannot read Secret {namespace}/{name}: {exc.status} {exc.reason}") from None
    ca = CertificateAuthority.generate(trust_domain)
    with tempfile.TemporaryDirectory(prefix="remora-ca-") as tmp:
        ca.save(Path(tmp))
        data: dict[str, bytes | str] = {
            n: base64.b64encode(Path(tmp, n).read_bytes()).decode() for n in FILES}
    body = client.V1Secret(metadata=client.V1ObjectMeta(name=name, namespace=namespace,
                                                        labels={"app.kubernetes.io/part-of": "remora"}),
                           type="Opaque", data=data)
    try:
        core.create_namespaced_secret(namespace, body)
    except ApiException as exc:
        if exc.status == 409:  # another replica stored its CA first: use that one
            return _load_from(core.read_namespaced_secret(name, namespace).data or {}, trust_domain)
        raise ValueError(f"cannot create Secret {namespace}/{name}: {exc.status} {exc.reason}") from None
    log.info("generated a new CA root and stored it in Secret %s/%s", namespace, name)
    return ca
