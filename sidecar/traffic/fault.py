"""Fault injection (VirtualService ``fault``): whether to delay and/or abort one request.

Each of delay and abort is drawn independently with its own percentage, as Envoy's fault
filter does. A gRPC abort is answered HTTP 200 with ``grpc-status`` (trailers-only response).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from control_plane.api.model import Fault
from sidecar.traffic import flags


@dataclass(frozen=True, slots=True)
class FaultDecision:
    delay: float = 0.0  # seconds to wait before forwarding (or before aborting)
    http_status: int | None = None  # abort with this status
    grpc_status: int | None = None  # abort with HTTP 200 and this grpc-status
    flags: tuple[str, ...] = ()

    @property
    def aborts(self) -> bool:
        return self.http_status is not None or self.grpc_status is not None


NONE = FaultDecision()


def _hit(percent: float, rand: Callable[[], float]) -> bool:
    return percent >= 100.0 or rand() * 100.0 < percent


def decide(fault: Fault | None, rand: Callable[[], float] = random.random) -> FaultDecision:
    if fault is None:
        return NONE
    delay, fl = 0.0, []
    if fault.delay is not None and _hit(fault.delay.percent, rand):
        delay = fault.delay.fixed_delay
        fl.append(flags.DI)
    http = grpc = None
    if fault.abort is not None and _hit(fault.abort.percent, rand):
        http, grpc = fault.abort.http_status, fault.abort.grpc_status
        fl.append(flags.FI)
    if not fl:
        return NONE
    return FaultDecision(delay, http, grpc, tuple(fl))
