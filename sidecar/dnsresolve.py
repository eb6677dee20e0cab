"""ServiceEntry ``resolution: DNS``: the proxy resolves the names and balances over the addresses.

As Envoy's STRICT_DNS clusters do for Istio: every address a name resolves to is an endpoint
(with the target's port, weight and identity); names are re-resolved every refresh period
(``REMORA_DNS_REFRESH_RATE``, Envoy's default 5 s); a failed lookup keeps the last good
addresses. Lookups run off the request path, from one background task per proxy, through
libc's ``getaddrinfo`` so the pod's /etc/hosts and resolv.conf apply (the proxy's uid is not
captured by its own DNS proxy). IPv4 addresses are used when a name has any, else IPv6 (Envoy's
V4_PREFERRED).

The data flows one way: ``overlay(config, resolved)`` is the configuration with the resolved
endpoints filled in, and the runtime builds its ``Router`` from it on every config push and on
every change of a resolution (never per request), so load balancing, outlier detection and pool
limits treat resolved endpoints like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.api.model import Cluster, Endpoint, ProxyConfig

log = logging.getLogger("remora.proxy.dnsresolve")

DEFAULT_REFRESH_RATE = 5.0  # seconds; Envoy's dns_refresh_rate default
LOOKUP_TIMEOUT = 5.0  # a lookup slower than this counts as failed (its thread is left to finish)

Lookup = Callable[[str], Awaitable[tuple[str, ...]]]


@dataclass(frozen=True, slots=True)
class Resolution:
    """What one name resolved to: the last good addresses and the latest outcome."""

    addresses: tuple[str, ...] = ()  # last good, sorted; kept when a later lookup fails
    error: str = ""  # the latest lookup's failure; "" when it succeeded
    resolved_at: float | None = None  # wall-clock time of the last good lookup


def names_of(cfg: ProxyConfig) -> frozenset[str]:
    """Every hostname the configuration asks the proxy to resolve."""
    return frozenset(t.hostname for c in cfg.clusters for t in c.dns)


def endpoints_of(cluster: Cluster, resolved: Mapping[str, Resolution]) -> tuple[Endpoint, ...]:
    """The cluster's endpoints: one per (target, address); an (address, port) twice counts once."""
    out: dict[tuple[str, int], Endpoint] = {}
    for t in cluster.dns:
        r = resolved.get(t.hostname)
        for address in r.addresses if r else ():
            out.setdefault((address, t.port), Endpoint(address, t.port, t.identity, {}, t.weight))
    return tuple(out.values())


def overlay(cfg: ProxyConfig, resolved: Mapping[str, Resolution]) -> ProxyConfig:
    """``cfg`` with the DNS clusters' endpoints filled in (``cfg`` itself when it has none)."""
    if not any(c.dns for c in cfg.clusters):
        return cfg
    clusters = tuple(dataclasses.replace(c, endpoints=endpoints_of(c, resolved)) if c.dns else c
                     for c in cfg.clusters)
    return dataclasses.replace(cfg, clusters=clusters)


def preferred(infos: list[tuple[Any, ...]]) -> tuple[str, ...]:
    """The addresses of getaddrinfo's answer: IPv4 if any, else IPv6; sorted, each once."""
    v4 = {i[4][0] for i in infos if i[0] == socket.AF_INET}
    v6 = {str(i[4][0]).split("%")[0] for i in infos if i[0] == socket.AF_INET6}
    return tuple(sorted(v4 or v6))


async def getaddrinfo_lookup(name: str) -> tuple[str, ...]:
    """Resolve with libc's getaddrinfo (hosts file, then the pod's resolvers) in a daemon thread.

    Not the loop's executor: a lookup stuck on an unreachable nameserver (10 s with glibc's
    defaults) would hold the proxy's exit, since executors are joined when the loop closes."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[list[tuple[Any, ...]]] = loop.create_future()

    def work() -> None:
        try:
            infos: Any = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except OSError as e:
            infos = e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(_settle, fut, infos)

    threading.Thread(target=work, name=f"resolve {name}", daemon=True).start()
    return preferred(await fut)


def _settle(fut: asyncio.Future[list[tuple[Any, ...]]], result: list[tuple[Any, ...]] | OSError) -> None:
    if fut.done():
        return
    if isinstance(result, OSError):
        fut.set_exception(result)
    else:
        fut.set_result(result)


class DnsResolver:
    """Keeps the configuration's names resolved; calls ``on_change`` when an address set changes."""

    def __init__(self, on_change: Callable[[], None], refresh_rate: float = DEFAULT_REFRESH_RATE,
                 lookup: Lookup = getaddrinfo_lookup, timeout: float = LOOKUP_TIMEOUT) -> None:
        self.on_change = on_change
        self.refresh_rate = refresh_rate
        self.lookup = lookup
        self.timeout = timeout
        self.names: frozenset[str] = frozenset()
        self.resolved: dict[str, Resolution] = {}
        self.counts: dict[tuple[str, str], int] = {}  # (name, "success"|"failure") → lookups
        self._pending: dict[str, asyncio.Future[tuple[str, ...]]] = {}  # a slow lookup is not repeated
        self._running: dict[str, asyncio.Task[bool]] = {}  # one refresh per name at a time
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def set_names(self, names: frozenset[str]) -> None:
        """The names of a new configuration: forget the others, resolve new ones at once."""
        new = names - self.names
        self.names = names
        for gone in set(self.resolved) - names:
            del self.resolved[gone]
        if new and self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        """Run the refresh loop on the running event loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def close(self) -> None:
        for task in (self._task, *self._running.values()):
            if task is not None:
                task.cancel()

    async def _run(self) -> None:
        """Every period (or at once for a config's new names) start a refresh of each name that
        has none running: a slow name never delays the others."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            for name in sorted(self.names - self._running.keys()):
                task = loop.create_task(self._refresh_one(name))
                self._running[name] = task
                task.add_done_callback(functools.partial(self._finished, name))
            with contextlib.suppress(TimeoutError):  # the period, or until a config brings new names
                await asyncio.wait_for(self._wake.wait(), self.refresh_rate)

    def _finished(self, name: str, task: asyncio.Task[bool]) -> None:
        del self._running[name]
        if not task.cancelled() and task.exception() is not None:  # a bug: say so, go on refreshing
            log.error("refreshing %s failed", name, exc_info=task.exception())

    async def refresh(self) -> bool:
        """Resolve every name once, concurrently; True when some name's addresses changed."""
        return any(await asyncio.gather(*(self._refresh_one(n) for n in sorted(self.names))))

    async def _refresh_one(self, name: str) -> bool:
        """Look ``name`` up and record the outcome; on a new address set call ``on_change``."""
        result = await self._resolve(name)
        if result is None or name not in self.names:  # still pending, or dropped meanwhile
            return False
        old = self.resolved.get(name, Resolution())
        ok = not isinstance(result, str)
        key = (name, "success" if ok else "failure")
        self.counts[key] = self.counts.get(key, 0) + 1
        if ok and result:
            addresses = tuple(sorted(set(result)))  # order-free: the same set is no change
            self.resolved[name] = Resolution(addresses, "", time.time())
            if addresses == old.addresses:
                return False
            log.info("%s resolved to %s", name, ", ".join(addresses))
            self.on_change()
            return True
        error = result if isinstance(result, str) else "no addresses"
        if error != old.error:  # keep the last good addresses; say so once per new error
            log.warning("resolving %s: %s (keeping %d last good addresses)", name, error, len(old.addresses))
        self.resolved[name] = dataclasses.replace(old, error=error)
        return False

    async def _resolve(self, name: str) -> tuple[str, ...] | str | None:
        """The addresses, an error message, or None while an earlier lookup is still running."""
        pending = self._pending.get(name)
        if pending is not None and not pending.done():
            return None
        fut = asyncio.ensure_future(self.lookup(name))
        fut.add_done_callback(_retrieved)
        self._pending[name] = fut
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except TimeoutError:
            return f"no answer within {self.timeout:g}s"
        except OSError as e:  # socket.gaierror: unknown name, no resolver reachable
            return e.strerror or str(e)

    # -- what operators see ------------------------------------------------------------------
    def dump(self) -> dict[str, dict[str, object]]:
        """The admin config dump's ``dns_resolutions``: name → addresses, error, age."""
        return {n: {"addresses": list(r.addresses), "error": r.error or None, "resolved_at": r.resolved_at}
                for n, r in sorted(self.resolved.items())}

    def render_prometheus(self) -> str:
        lines = ["# TYPE remora_dns_resolutions_total counter"]
        for (name, result), n in sorted(self.counts.items()):
            host = name.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'remora_dns_resolutions_total{{host="{host}",result="{result}"}} {n}')
        return "\n".join(lines) + "\n"


def _retrieved(fut: asyncio.Future[tuple[str, ...]]) -> None:
    """Mark a lookup's exception as seen (one that outlived its timeout is never awaited)."""
    if not fut.cancelled():
        fut.exception()
