"""Where the local cluster keeps its state, and the names it gives what it makes.

Everything lives under one state directory (``/var/lib/remora/local``, or ``REMORA_LOCAL_DIR``)
and every network namespace starts with one prefix (``remora-local``, or
``REMORA_LOCAL_PREFIX``), so ``remoractl local down`` finds all of it again after a crash.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path("/var/lib/remora/local")
DEFAULT_PREFIX = "remora-local"
MARKER = ".remora-local"  # only a directory holding this file is ever removed by `down`
REPO_ROOT = Path(__file__).resolve().parent.parent
# The virtualenv's console scripts (remora-init, remora-proxy, python3) come first on a pod's PATH.
BIN_DIR = Path(sys.executable).parent
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class StateDir:
    """The layout of one local cluster's state directory."""

    root: Path

    @classmethod
    def from_env(cls, override: str | os.PathLike[str] | None = None) -> StateDir:
        return cls(Path(override or os.environ.get("REMORA_LOCAL_DIR") or DEFAULT_DIR).absolute())

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def objects(self) -> Path:
        """The API server's store as the control plane's files source reads it."""
        return self.root / "objects"

    @property
    def store(self) -> Path:
        """Every applied object (JSON), including kinds the control plane does not read."""
        return self.root / "store"

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    @property
    def root_cert(self) -> Path:
        return self.ca / "root-cert.pem"

    @property
    def token_key(self) -> Path:
        return self.root / "token.key"

    @property
    def injector(self) -> Path:
        return self.root / "injector"

    @property
    def mesh_config(self) -> Path:
        return self.root / "mesh.yaml"

    @property
    def namespaces_file(self) -> Path:
        """Namespace objects for the injector (it cannot ask an API server for labels)."""
        return self.root / "namespaces.yaml"

    @property
    def pods(self) -> Path:
        return self.root / "pods"

    @property
    def system(self) -> Path:
        """Logs and pid files of the control plane, the injector and the daemon."""
        return self.root / "system"

    @property
    def pids(self) -> Path:
        """One file per process group the daemon started (for `down` after a crash)."""
        return self.root / "pids"

    @property
    def daemon_pid(self) -> Path:
        return self.system / "daemon.pid"

    @property
    def daemon_log(self) -> Path:
        return self.system / "daemon.log"

    @property
    def socket(self) -> Path:
        return self.root / "daemon.sock"

    @property
    def prefix_file(self) -> Path:
        return self.root / "prefix"

    def pod_dir(self, namespace: str, name: str) -> Path:
        return self.pods / namespace / name

    def log_file(self, namespace: str, pod: str, container: str) -> Path:
        return self.pod_dir(namespace, pod) / "logs" / f"{container}.log"

    def prefix(self) -> str:
        """The namespace prefix this cluster was started with (or the default)."""
        try:
            return self.prefix_file.read_text().strip() or default_prefix()
        except OSError:
            return default_prefix()


def default_prefix() -> str:
    return os.environ.get("REMORA_LOCAL_PREFIX") or DEFAULT_PREFIX


def pod_netns_name(namespace: str, pod: str) -> str:
    """The suffix given to ``Node.add_pod``: the netns is ``<prefix>-<namespace>-<pod>``."""
    return f"{namespace}-{pod}"


def container_path() -> str:
    return f"{BIN_DIR}:{SYSTEM_PATH}"
