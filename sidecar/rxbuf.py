"""A reusable byte buffer shared by every connection of the process.

The event loop runs one callback at a time, so bytes can land in a process-wide buffer (the
opaque TLS relay decrypts into one) and be consumed before the next callback runs: no
``bytes`` object per TLS record and no per-connection buffer. A consumer may keep a view of
the bytes, though (a transport that could not send them all holds on to a ``memoryview``,
which in a bulk transfer is nearly every write): then the buffer is lent to it and another
one is used, so bytes already handed out are never overwritten. Lent buffers are taken back once
their holder lets go, so a steady transfer cycles through two or three buffers without
allocating (or zero-filling) any.
"""

from __future__ import annotations

SIZE = 262144  # as large as uvloop's own read buffer: a whole socket buffer in one read
KEEP_LENT = 2  # lent buffers remembered for reuse; more are left to be freed by their holder


def _held(buf: bytearray) -> bool:
    """Whether any view of ``buf`` is alive (a bytearray cannot change size while one is)."""
    try:
        buf.append(0)
    except BufferError:
        return True
    del buf[-1]
    return False


class SharedBuffer:
    __slots__ = ("buf", "size", "lent")

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self.buf: bytearray | None = None  # made on first use: an idle proxy does not pay for it
        self.lent: list[bytearray] = []

    def get(self) -> bytearray:
        buf = self.buf
        if buf is None:
            for i, spare in enumerate(self.lent):
                if not _held(spare):
                    buf = self.lent.pop(i)
                    break
            else:
                buf = bytearray(self.size)
            self.buf = buf
        return buf

    def reclaim(self) -> None:
        """Call once a consumer is done with the bytes: keep the buffer if nobody holds a view
        of it, else lend it to the holder and use another one next time."""
        buf = self.buf
        if buf is not None and _held(buf):
            self.buf = None
            if len(self.lent) < KEEP_LENT:
                self.lent.append(buf)
