"""One reusable byte buffer per use, shared by every connection of the process.

The event loop runs one callback at a time, so a read can land in a process-wide buffer and
be consumed (fed to a TLS BIO, encrypted, written) before the next callback runs: no
per-read ``bytes`` object and no per-connection buffer. A consumer may keep a view of the
bytes, though (a transport that could not send them all holds on to a ``memoryview``): then
the buffer is handed over to it and a fresh one is made, so bytes already handed out are
never overwritten.
"""

from __future__ import annotations

SIZE = 262144  # as large as uvloop's own read buffer: a whole socket buffer in one read


class SharedBuffer:
    __slots__ = ("buf", "size")

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self.buf: bytearray | None = None  # made on first use: an idle proxy does not pay for it

    def get(self) -> bytearray:
        buf = self.buf
        if buf is None:
            buf = self.buf = bytearray(self.size)
        return buf

    def reclaim(self) -> None:
        """Call once a consumer is done with the bytes: keep the buffer if nobody holds a view
        of it, else leave it to the holder (a new one is made on next use)."""
        buf = self.buf
        if buf is None:
            return
        try:
            buf.append(0)  # a bytearray cannot change size while any view of it is alive
        except BufferError:
            self.buf = None
            return
        del buf[-1]
