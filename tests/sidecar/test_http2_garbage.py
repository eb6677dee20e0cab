"""A relayed HTTP/2 exchange leaves nothing for the cyclic GC: reference counting frees it.

Both relays (outbound and inbound, real Router, Stats, Labeler, authorization hook) run in
this process over in-memory transports (perf/h2_relay_micro.py's harness, no root, no
sockets). Before the exchange broke its exchange <-> pipe cycle at its end, every exchange
left its objects for the collector, which in a proxy walks a large heap.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # perf/ is not installed

from perf import h2_relay_micro as harness  # noqa: E402
from sidecar.http import h2select, ngcodec  # noqa: E402
from sidecar.http2 import _Exchange, _Pipe  # noqa: E402

pytestmark = pytest.mark.skipif(not ngcodec.available(),
                                reason="native HTTP/2 codec not built (the harness's end codecs)")


@pytest.mark.parametrize("codec", [h2select.NGHTTP2, h2select.H2])
async def test_finished_exchanges_leave_no_cyclic_garbage(codec: str) -> None:
    before = h2select.chosen()
    h2select.select(codec)
    ctx = harness.contexts()
    try:
        await harness.run(ctx, 40)  # pools connected
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            await harness.run(ctx, 200)
            gc.collect()
            leaked = [o for o in gc.garbage if isinstance(o, (_Exchange, _Pipe))]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    finally:
        h2select.select(before)
    served = sum(n for (direction, _, code, _), n in ctx.stats.requests.items() if code == 200)
    assert served == 2 * 240  # every exchange went through both relays
    assert leaked == []
