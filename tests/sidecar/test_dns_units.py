"""The DNS proxy without a pod: the codec, the name table, and answers over real loopback
sockets (a fake upstream resolver in this process). No root needed."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.api.model import OutboundPort, ProxyConfig
from sidecar import dns, dnswire
from sidecar.dnstable import NameTable, aliases


def _port(host: str, addresses: tuple[str, ...], port: int, protocol: str) -> OutboundPort:
    return OutboundPort(host, addresses, port, protocol, f"{host}|{port}")


CONFIG = ProxyConfig(outbound=(
    _port("reviews.shop.svc.cluster.local", ("198.19.0.10", "fd00:19::a"), 9080, "http"),
    _port("reviews.shop.svc.cluster.local", ("198.19.0.10",), 9443, "grpc"),
    _port("db.other.svc.cluster.local", ("198.19.0.11",), 5432, "tcp"),
    _port("api.example.com", ("198.19.0.12",), 443, "tls"),
    _port("noaddr.example.com", (), 443, "tls"),
))
TABLE = NameTable.build(CONFIG, "shop")


def _records(reply: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """(rcode, [(type, rdata)]) of a reply produced by dnswire.response."""
    _, flags, qd, an, _, _ = dnswire.HEADER.unpack_from(reply)
    _, off = dnswire.read_name(reply, dnswire.HEADER.size)
    off += 4
    out = []
    for _ in range(an):
        _, off = dnswire.read_name(reply, off)
        rtype, _, _, size = struct.unpack_from("!HHIH", reply, off)
        off += 10
        out.append((rtype, reply[off:off + size]))
        off += size
    return flags & 0xF, out


def _ask(name: str, qtype: int = dnswire.A) -> tuple[int, list[tuple[int, bytes]]]:
    proxy = dns.DnsProxy(lambda: TABLE, ())
    reply = asyncio.run(proxy.answer(dnswire.build_query(name, qtype), "udp"))
    assert reply is not None
    return _records(reply)


@pytest.mark.parametrize("name", ["reviews", "reviews.shop", "reviews.shop.svc",
                                  "reviews.shop.svc.cluster.local", "REVIEWS.Shop.svc"])
def test_mesh_names_in_every_form_the_search_path_produces(name: str) -> None:
    assert _ask(name) == (dnswire.NOERROR, [(dnswire.A, socket.inet_aton("198.19.0.10"))])


def test_aaaa_nodata_srv_and_service_entries() -> None:
    assert _ask("reviews", dnswire.AAAA) == (
        dnswire.NOERROR, [(dnswire.AAAA, socket.inet_pton(socket.AF_INET6, "fd00:19::a"))])
    assert _ask("db.other", dnswire.AAAA) == (dnswire.NOERROR, [])  # known name, no IPv6: NODATA
    assert _ask("db.other", dnswire.TXT) == (dnswire.NOERROR, [])
    assert _ask("api.example.com")[1] == [(dnswire.A, socket.inet_aton("198.19.0.12"))]
    rcode, srv = _ask("_grpc._tcp.reviews.shop", dnswire.SRV)
    assert rcode == dnswire.NOERROR and len(srv) == 1
    assert srv[0][1][:6] == struct.pack("!HHH", 0, 100, 9443)
    assert dnswire.read_name(srv[0][1], 6)[0] == "reviews.shop.svc.cluster.local"


def test_names_outside_the_mesh_are_not_answered_locally() -> None:
    # "db" is in another namespace, so only its qualified names are ours; no-address hosts
    # and unknown names are forwarded (here: no upstream, so SERVFAIL).
    for name in ("db", "noaddr.example.com", "example.org", "reviews.shop.svc.cluster"):
        assert TABLE.answer(dnswire.Question(name, dnswire.A, dnswire.IN)) is None
        assert _ask(name)[0] == dnswire.SERVFAIL
    assert list(aliases("db.other.svc.cluster.local", "shop")) == [
        "db.other.svc.cluster.local", "db.other.svc", "db.other"]


def test_a_large_answer_is_truncated_over_udp_but_not_tcp() -> None:
    big = _port("big.shop.svc.cluster.local", tuple(f"198.19.1.{i}" for i in range(1, 60)), 80,
                "http")
    many = NameTable.build(ProxyConfig(outbound=(big,)), "shop")
    proxy = dns.DnsProxy(lambda: many, ())
    query = dnswire.build_query("big", dnswire.A)
    udp = asyncio.run(proxy.answer(query, "udp"))
    tcp = asyncio.run(proxy.answer(query, "tcp"))
    assert udp is not None and tcp is not None
    assert struct.unpack_from("!H", udp, 2)[0] & 0x0200 and _records(udp)[1] == []
    assert len(_records(tcp)[1]) == 59


def test_read_resolv_conf(tmp_path) -> None:
    p = tmp_path / "resolv.conf"
    p.write_text("# generated\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\n"
                 "nameserver 198.18.0.1 ; node\nnameserver fd00:18::1\noptions ndots:5\n")
    conf = dns.read_resolv_conf(p)
    assert conf.nameservers == ("198.18.0.1", "fd00:18::1")
    assert conf.search == ("shop.svc.cluster.local", "svc.cluster.local", "cluster.local")
    assert dns.read_resolv_conf(tmp_path / "absent") == dns.ResolvConf()


# -- malformed input: never an exception; a FORMERR when there is a header, else a drop --------

@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_get_formerr_or_a_drop(data: bytes) -> None:
    proxy = dns.DnsProxy(lambda: TABLE, ())
    try:
        dnswire.parse_query(data)
    except dnswire.FormatError:
        reply = asyncio.run(proxy.answer(data, "udp"))
        if reply is not None:
            assert len(data) >= 12 and reply[:2] == data[:2]
            assert dnswire.rcode_of(reply) == dnswire.FORMERR


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**16 - 1), st.lists(st.binary(min_size=1, max_size=63), max_size=5),
       st.integers(0, 2**16 - 1), st.binary(max_size=40), st.integers(0, 40))
def test_mangled_queries_never_raise(qid: int, labels: list[bytes], qtype: int, tail: bytes,
                                     cut: int) -> None:
    name = b"".join(bytes([len(x)]) + x for x in labels) + b"\0"
    data = dnswire.HEADER.pack(qid, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1)
    data = (data + tail)[:max(0, len(data) + len(tail) - cut)]
    proxy = dns.DnsProxy(lambda: TABLE, ())
    reply = asyncio.run(proxy.answer(data, "udp"))
    if reply is not None:
        assert reply[:2] == data[:2]


def test_compression_loops_and_bad_labels_are_format_errors() -> None:
    header = dnswire.HEADER.pack(1, 0, 1, 0, 0, 0)
    for body in (b"\xc0\x0c", b"\x40abc\x00", b"\x03ab", b"\x03a\xffc\x00\x00\x01\x00\x01"):
        with pytest.raises(dnswire.FormatError):
            dnswire.parse_query(header + body)
    with pytest.raises(ValueError):
        dnswire.encode_name("a" * 64 + ".com")


# -- forwarding over real sockets to a fake upstream --------------------------------------------

class _Upstream(asyncio.DatagramProtocol):
    """Answers every query with one A record 203.0.113.7... a test address of its own."""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        q = dnswire.parse_query(data)
        self.transport.sendto(dnswire.response(q, data, dnswire.NOERROR,
                                               (dnswire.a_record("198.18.251.7", 5),), False), addr)


async def _tcp_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.readexactly(struct.unpack("!H", await reader.readexactly(2))[0])
    out = dnswire.response(dnswire.parse_query(data), data, dnswire.NXDOMAIN, (), False)
    writer.write(struct.pack("!H", len(out)) + out)
    await writer.drain()
    writer.close()


def _udp_query(addr: tuple[str, int], query: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(query, addr)
        return s.recv(4096)


async def test_forwarding_udp_and_tcp_then_failing_over_and_counting() -> None:
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(_Upstream, local_addr=("127.0.0.1", 0))
    port = udp.get_extra_info("sockname")[1]
    tcp = await asyncio.start_server(_tcp_upstream, "127.0.0.1", port)
    # 127.0.0.2 has nothing listening: the proxy moves on to the next nameserver.
    proxy = dns.DnsProxy(lambda: TABLE, ("127.0.0.2", "127.0.0.1"), upstream_port=port,
                         timeout=0.5)
    await proxy.start("127.0.0.1", 0)
    try:
        addr = proxy._udp[0].get_extra_info("sockname")
        reply = await asyncio.to_thread(
            _udp_query, addr, dnswire.build_query("example.org", dnswire.A, qid=77))
        assert reply[:2] == b"\x00\x4d"
        assert _records(reply) == (dnswire.NOERROR, [(dnswire.A, socket.inet_aton("198.18.251.7"))])

        tcp_addr = proxy._tcp[0].sockets[0].getsockname()
        reader, writer = await asyncio.open_connection(tcp_addr[0], tcp_addr[1])
        for name, rcode in (("example.org", dnswire.NXDOMAIN), ("reviews", dnswire.NOERROR)):
            q = dnswire.build_query(name, dnswire.A)
            writer.write(struct.pack("!H", len(q)) + q)
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            assert dnswire.rcode_of(await reader.readexactly(size)) == rcode
        writer.close()
        text = proxy.stats.render_prometheus()
        assert 'remora_dns_requests_total{result="forwarded",protocol="udp"} 1' in text
        assert 'remora_dns_requests_total{result="forwarded",protocol="tcp"} 1' in text
        assert 'remora_dns_requests_total{result="local",protocol="tcp"} 1' in text
        udp.close()
        tcp.close()
        assert await proxy.answer(dnswire.build_query("gone.example", dnswire.A), "udp")
        assert 'result="failed",protocol="udp"} 1' in proxy.stats.render_prometheus()
    finally:
        proxy.close()
