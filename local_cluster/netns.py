"""Network namespaces for pods: one "node" namespace holding a bridge, one namespace per pod.

Each pod gets a veth pair: ``eth0`` inside the pod, the peer on the node's bridge. Pods get
addresses from 198.18.0.0/16 (IPv4) and fd00:18::/64 (IPv6), the node's bridge is the default
gateway. Service VIPs come from 198.19.0.0/16; nothing routes them except the pods' own
iptables rules (or the node's DNAT for unmeshed pods), exactly as kube-proxy would.

Everything made here is named with a caller-chosen prefix so that a cleanup can find it again
after a crash (``destroy_prefix``). Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

POD_CIDR = ipaddress.ip_network("198.18.0.0/16")
SERVICE_CIDR = ipaddress.ip_network("198.19.0.0/16")
POD_CIDR6 = ipaddress.ip_network("fd00:18::/64")
GATEWAY = POD_CIDR.network_address + 1
GATEWAY6 = POD_CIDR6.network_address + 1
NETNS_ETC = Path("/etc/netns")


class NetnsError(RuntimeError):
    """A namespace operation failed; the message names the command and its error output."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip ARGS`` (inside ``netns`` when given) and raise NetnsError on failure."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def sysctl(netns: str, key: str, value: str) -> None:
    exec_in(netns, ["sysctl", "-q", "-w", f"{key}={value}"], check=True)


def exec_in(
    netns: str,
    argv: Sequence[str],
    *,
    uid: int | None = None,
    gid: int | None = None,
    check: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run a command to completion inside ``netns`` (optionally as uid/gid) and capture output."""
    proc = subprocess.run(
        command_in(netns, argv, uid=uid, gid=gid),
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        timeout=timeout,
        input=input,
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"in {netns}: {' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def command_in(
    netns: str, argv: Sequence[str], *, uid: int | None = None, gid: int | None = None
) -> list[str]:
    """The argv that runs ``argv`` inside ``netns`` with the given uid/gid.

    ``ip netns exec`` also bind-mounts /etc/netns/<netns>/* over /etc, which is how a pod
    gets its own hosts file.
    """
    prefix = ["ip", "netns", "exec", netns]
    if uid is not None or gid is not None:
        u = uid if uid is not None else 0
        g = gid if gid is not None else u
        prefix += ["setpriv", f"--reuid={u}", f"--regid={g}", "--clear-groups", "--"]
    return [*prefix, *argv]


def spawn_in(
    netns: str,
    argv: Sequence[str],
    *,
    uid: int | None = None,
    gid: int | None = None,
    env: Mapping[str, str] | None = None,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    cwd: str | None = None,
) -> subprocess.Popen:
    """Start a long-running process inside ``netns`` in its own process group."""
    return subprocess.Popen(
        command_in(netns, argv, uid=uid, gid=gid),
        env=dict(env) if env is not None else None,
        stdout=stdout,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        start_new_session=True,
    )


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> int | None:
    """SIGTERM a process group, SIGKILL it after ``timeout``; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def list_netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def delete_netns(netns: str) -> None:
    """Kill every process in ``netns``, delete it and its /etc/netns directory. Idempotent."""
    for _ in range(3):
        pids = netns_pids(netns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    ip("netns", "delete", netns, check=False)
    shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)


def destroy_prefix(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with ``prefix``; returns their names."""
    gone = [ns for ns in list_netns() if ns.startswith(prefix)]
    # Pods first, the node (which holds the bridge) last.
    for ns in sorted(gone, key=lambda n: n.endswith("-node")):
        delete_netns(ns)
    return gone


@dataclass
class Pod:
    """A pod's network namespace on a node's bridge."""

    name: str
    netns: str
    ip: str
    ip6: str | None
    node: Node

    def exec(self, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        return exec_in(self.netns, argv, **kw)

    def spawn(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        return spawn_in(self.netns, argv, **kw)

    def command(self, argv: Sequence[str], **kw) -> list[str]:
        return command_in(self.netns, argv, **kw)

    def write_hosts(self, entries: Mapping[str, str]) -> Path:
        """Write /etc/netns/<pod>/hosts so names resolve inside the pod (``ip netns exec`` only)."""
        d = NETNS_ETC / self.netns
        d.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost", f"{self.ip} {self.name}"]
        lines += [f"{addr} {name}" for name, addr in entries.items()]
        path = d / "hosts"
        path.write_text("\n".join(lines) + "\n")
        return path


@dataclass
class Node:
    """A node namespace with bridge ``br0`` (198.18.0.1/16, fd00:18::1/64)."""

    prefix: str
    netns: str
    ipv6: bool = True
    pods: dict[str, Pod] = field(default_factory=dict)
    _next_host: int = 10

    @classmethod
    def create(cls, prefix: str, ipv6: bool = True) -> Node:
        node = cls(prefix=prefix, netns=f"{prefix}-node", ipv6=ipv6)
        try:
            ip("netns", "add", node.netns)
            ip("link", "set", "lo", "up", netns=node.netns)
            ip("link", "add", "br0", "type", "bridge", netns=node.netns)
            ip("addr", "add", f"{GATEWAY}/{POD_CIDR.prefixlen}", "dev", "br0", netns=node.netns)
            if ipv6:
                ip("addr", "add", f"{GATEWAY6}/{POD_CIDR6.prefixlen}", "dev", "br0", "nodad",
                   netns=node.netns)
            ip("link", "set", "br0", "up", netns=node.netns)
        except Exception:
            node.destroy()
            raise
        return node

    def add_pod(self, name: str, address: str | None = None) -> Pod:
        """Create pod ``name`` with the next free address (or ``address``) on the bridge."""
        if name in self.pods:
            raise NetnsError(f"pod {name} already exists on {self.netns}")
        if address is None:
            host = self._next_host
            self._next_host += 1
            addr4 = str(POD_CIDR.network_address + host)
            addr6 = str(POD_CIDR6.network_address + host) if self.ipv6 else None
        else:
            addr4 = address
            offset = int(ipaddress.ip_address(address)) - int(POD_CIDR.network_address)
            addr6 = str(POD_CIDR6.network_address + offset) if self.ipv6 else None
        netns = f"{self.prefix}-{name}"
        # Interface names are limited to 15 characters: a short random name for the node side.
        peer = "v" + secrets.token_hex(6)
        pod = Pod(name=name, netns=netns, ip=addr4, ip6=addr6, node=self)
        self.pods[name] = pod
        try:
            ip("netns", "add", netns)
            ip("link", "set", "lo", "up", netns=netns)
            ip("link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", peer,
               "netns", self.netns)
            ip("link", "set", peer, "master", "br0", "up", netns=self.netns)
            ip("addr", "add", f"{addr4}/{POD_CIDR.prefixlen}", "dev", "eth0", netns=netns)
            ip("link", "set", "eth0", "up", netns=netns)
            ip("route", "add", "default", "via", str(GATEWAY), netns=netns)
            if addr6:
                ip("addr", "add", f"{addr6}/{POD_CIDR6.prefixlen}", "dev", "eth0", "nodad",
                   netns=netns)
                ip("-6", "route", "add", "default", "via", str(GATEWAY6), netns=netns)
        except Exception:
            self.remove_pod(name)
            raise
        return pod

    def remove_pod(self, name: str) -> None:
        pod = self.pods.pop(name, None)
        if pod is not None:
            delete_netns(pod.netns)

    def destroy(self) -> None:
        """Remove every pod and the node itself. Idempotent."""
        for name in list(self.pods):
            self.remove_pod(name)
        destroy_prefix(self.prefix)


def new_prefix(kind: str = "rt") -> str:
    """A unique, short namespace prefix such as ``remora-rt-1a2b3c``."""
    return f"remora-{kind}-{secrets.token_hex(3)}"


def have_root_and_tools() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and iptables)"
    for tool in ("ip", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs the '{tool}' command (apt-get install iproute2 util-linux)"
    return None
