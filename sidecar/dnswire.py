"""A small DNS message codec (RFC 1035): parse a query, build an answer. Pure, no sockets.

Only what the DNS proxy needs: the header, one question, and A / AAAA / SRV answers. Anything
the proxy does not answer itself is forwarded as the original bytes, so the codec never has
to understand (or re-encode) other record types. Malformed input raises ``FormatError``; the
caller answers FORMERR when there is a header to answer, and drops the packet otherwise.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT, ANY = 1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 255
IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

HEADER = struct.Struct("!HHHHHH")
MAX_UDP = 512  # without EDNS(0), a UDP answer fits in 512 bytes or is truncated (TC)
_QR, _AA, _TC, _RD, _RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
_OPCODE_MASK = 0x7800
_MAX_NAME = 255
_MAX_POINTERS = 16  # compression loops in hostile input end here


class FormatError(ValueError):
    """The bytes are not a DNS query this codec can read."""


@dataclass(frozen=True, slots=True)
class Question:
    name: str  # lower case, no trailing dot; "" is the root
    qtype: int
    qclass: int


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int
    question: Question
    end: int  # offset just past the question (additional records, e.g. EDNS, follow)

    @property
    def opcode(self) -> int:
        return (self.flags & _OPCODE_MASK) >> 11


@dataclass(frozen=True, slots=True)
class Record:
    """An answer record for the question's name (the codec points back at the question)."""

    rtype: int
    ttl: int
    rdata: bytes


def parse_query(data: bytes) -> Query:
    """The header and the single question of a query; raises FormatError."""
    if len(data) < HEADER.size:
        raise FormatError("shorter than a DNS header")
    qid, flags, qdcount, ancount, _, _ = HEADER.unpack_from(data)
    if flags & _QR:
        raise FormatError("a response, not a query")
    if qdcount != 1:
        raise FormatError(f"{qdcount} questions; exactly one is supported")
    if ancount:
        raise FormatError("a query with answers")
    name, offset = read_name(data, HEADER.size)
    if offset + 4 > len(data):
        raise FormatError("question truncated")
    qtype, qclass = struct.unpack_from("!HH", data, offset)
    return Query(qid, flags, Question(name, qtype, qclass), offset + 4)


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    """A possibly compressed name at ``offset``: (lower-case name, offset after it)."""
    labels: list[str] = []
    end: int | None = None
    jumps = length = 0
    while True:
        if offset >= len(data):
            raise FormatError("name runs past the end")
        size = data[offset]
        if size & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise FormatError("compression pointer truncated")
            jumps += 1
            if jumps > _MAX_POINTERS:
                raise FormatError("compression loop")
            if end is None:
                end = offset + 2
            offset = ((size & 0x3F) << 8) | data[offset + 1]
            continue
        if size & 0xC0:
            raise FormatError("reserved label type")
        offset += 1
        if size == 0:
            break
        label = data[offset:offset + size]
        if len(label) != size:
            raise FormatError("label runs past the end")
        length += size + 1
        if length > _MAX_NAME:
            raise FormatError("name longer than 255 bytes")
        try:
            labels.append(label.decode("ascii").lower())
        except UnicodeDecodeError:
            raise FormatError("label is not ASCII") from None
        offset += size
    return ".".join(labels), (end if end is not None else offset)


def encode_name(name: str) -> bytes:
    """Uncompressed wire form of a dotted name; raises ValueError on an impossible name."""
    out = bytearray()
    for label in name.strip(".").split(".") if name.strip(".") else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"DNS label {label!r} must be 1-63 bytes")
        out += bytes([len(raw)]) + raw
    out.append(0)
    if len(out) > _MAX_NAME:
        raise ValueError(f"DNS name {name!r} is longer than 255 bytes")
    return bytes(out)


def a_record(address: str, ttl: int) -> Record:
    ip = ipaddress.ip_address(address)
    return Record(AAAA if ip.version == 6 else A, ttl, ip.packed)


def srv_record(priority: int, weight: int, port: int, target: str, ttl: int) -> Record:
    return Record(SRV, ttl, struct.pack("!HHH", priority, weight, port) + encode_name(target))


def response(query: Query, data: bytes, rcode: int, answers: tuple[Record, ...] = (),
             authoritative: bool = True, limit: int | None = MAX_UDP) -> bytes:
    """The answer to ``query`` (whose bytes are ``data``): the question echoed, then records.

    Above ``limit`` bytes (UDP) the records are dropped and TC is set, so the client retries
    over TCP, as RFC 1035 asks.
    """
    question = data[HEADER.size:query.end]
    flags = _QR | (query.flags & (_OPCODE_MASK | _RD)) | _RA | (rcode & 0xF)
    if authoritative:
        flags |= _AA
    body = b"".join(
        # 0xC00C: a pointer to the question's name, right after the header.
        struct.pack("!HHHIH", 0xC00C, r.rtype, IN, r.ttl, len(r.rdata)) + r.rdata
        for r in answers
    )
    if limit is not None and HEADER.size + len(question) + len(body) > limit:
        body, answers, flags = b"", (), flags | _TC
    return HEADER.pack(query.id, flags, 1, len(answers), 0, 0) + question + body


def error_for(data: bytes, rcode: int = FORMERR) -> bytes | None:
    """An error answer to bytes that did not parse: header only; None when there is no header
    to answer (or it is itself a response), so the caller drops the packet."""
    if len(data) < HEADER.size:
        return None
    qid, flags = struct.unpack_from("!HH", data)
    if flags & _QR:
        return None
    return HEADER.pack(qid, _QR | (flags & (_OPCODE_MASK | _RD)) | _RA | rcode, 0, 0, 0, 0)


def build_query(name: str, qtype: int, qid: int = 0x1234) -> bytes:
    """A recursive query (for tests and tools)."""
    return HEADER.pack(qid, _RD, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, IN)


def rcode_of(message: bytes) -> int:
    if len(message) < HEADER.size:
        raise FormatError("shorter than a DNS header")
    flags: int = struct.unpack_from("!H", message, 2)[0]
    return flags & 0xF
