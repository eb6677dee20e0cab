"""Per-proxy bookkeeping: who is connected, what was sent, what was ACKed, the last error.

This is what ``remoractl proxy-status`` shows (SYNCED / STALE / NOT SENT / ERROR).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from control_plane.builder import ProxyKey, Snapshot

SYNCED = "SYNCED"  # the proxy ACKed the version last sent to it
STALE = "STALE"  # a version was sent and not answered yet
NOT_SENT = "NOT SENT"  # nothing was sent yet (no configuration, or it just connected)
ERROR = "ERROR"  # the proxy NACKed the version last sent; it keeps its last good one


@dataclass
class ProxyState:
    proxy_id: str
    key: ProxyKey
    identity: str
    proxy_version: str
    address: str
    connected_at: float = field(default_factory=time.time)
    sent: Snapshot | None = None
    sent_at: float | None = None
    acked: Snapshot | None = None
    acked_at: float | None = None
    nacked_version: str | None = None
    last_error: str | None = None
    cert_not_after: str | None = None
    certs_issued: int = 0
    template_hash: str = ""  # from hello; "" for a proxy that does not say (older releases)
    ignored_fields: set[str] = field(default_factory=set)  # snapshot fields it does not know
    pruned_fields: set[str] = field(default_factory=set)  # fields left out for an older proxy

    @property
    def sent_version(self) -> str | None:
        return self.sent.config.version if self.sent else None

    @property
    def acked_version(self) -> str | None:
        return self.acked.config.version if self.acked else None

    def status(self) -> str:
        if self.sent is None:
            return NOT_SENT
        if self.nacked_version == self.sent_version:
            return ERROR
        if self.acked_version == self.sent_version:
            return SYNCED
        return STALE

    def on_sent(self, snap: Snapshot) -> None:
        self.sent, self.sent_at = snap, time.time()

    def on_ack(self, version: str) -> bool:
        """Record an ACK; False when it is not for the version last sent (a late answer)."""
        if self.sent is None or version != self.sent_version:
            return False
        self.acked, self.acked_at = self.sent, time.time()
        self.nacked_version = None
        return True

    def on_nack(self, version: str, reason: str) -> None:
        self.nacked_version, self.last_error = version, reason

    def to_dict(self) -> dict[str, Any]:
        return {
            "proxy_id": self.proxy_id, "namespace": self.key.namespace, "pod": self.key.pod,
            "identity": self.identity, "proxy_version": self.proxy_version, "address": self.address,
            "connected_at": self.connected_at, "status": self.status(),
            "sent_version": self.sent_version, "sent_at": self.sent_at,
            "acked_version": self.acked_version, "acked_at": self.acked_at,
            "nacked_version": self.nacked_version, "last_error": self.last_error,
            "cert_not_after": self.cert_not_after, "certs_issued": self.certs_issued,
            "unsupported": list(self.sent.config.unsupported) if self.sent else [],
            "template_hash": self.template_hash,
            "ignored_fields": sorted(self.ignored_fields),
            "pruned_fields": sorted(self.pruned_fields),
        }
