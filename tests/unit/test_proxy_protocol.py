"""reactor/proxy_protocol.py: the PROXY header decoder against a reference encoder kept here
(the library has none), under any chunking; every refusal with its reason; the caps."""

from __future__ import annotations

import ipaddress
import itertools
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactor.proxy_protocol import (
    TLV_ALPN, TLV_AUTHORITY, TLV_CRC32C, TLV_NOOP, TLV_UNIQUE_ID, V1_MAX_BYTES, V2_SIGNATURE,
    ProxyDecoder, ProxyHeader, ProxyProtocolError, ProxyReason, _crc32c,
)

R = ProxyReason
FAMILIES = {0: socket.AF_UNSPEC, 1: socket.AF_INET, 2: socket.AF_INET6, 3: socket.AF_UNIX}
PROTOCOLS = {0: 0, 1: socket.SOCK_STREAM, 2: socket.SOCK_DGRAM}


# -- the reference encoder ------------------------------------------------------------------

def crc32c_bitwise(data: bytes) -> int:
    """CRC-32C one bit at a time: slow, but independent of the module's table."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def encode_v1(proto: str, src: str = "", dst: str = "", sport: int = 0, dport: int = 0) -> bytes:
    if proto == "UNKNOWN":
        return b"PROXY UNKNOWN\r\n"
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode()


def encode_v2(command: int, fam: int, proto: int, src=None, dst=None, tlvs=(),
              crc: bool = False, ver: int = 2, length_delta: int = 0) -> bytes:
    """A v2 header; ``src``/``dst`` are (ip, port) for fam 1/2, path bytes for fam 3."""
    if fam in (1, 2):
        block = (ipaddress.ip_address(src[0]).packed + ipaddress.ip_address(dst[0]).packed
                 + src[1].to_bytes(2, "big") + dst[1].to_bytes(2, "big"))
    elif fam == 3:
        block = src.ljust(108, b"\0") + dst.ljust(108, b"\0")
    else:
        block = b""
    body = block + b"".join(bytes([t]) + len(v).to_bytes(2, "big") + v for t, v in tlvs)
    if crc:
        body += bytes([TLV_CRC32C, 0, 4]) + bytes(4)
    head = V2_SIGNATURE + bytes([ver << 4 | command, fam << 4 | proto])
    wire = head + (len(body) + length_delta).to_bytes(2, "big") + body
    if crc:
        wire = wire[:-4] + crc32c_bitwise(wire).to_bytes(4, "big")
    return wire


# -- hypothesis strategies: (wire bytes, the header it must decode to) ----------------------

ports = st.integers(0, 65535)


@st.composite
def v1_headers(draw):
    kind = draw(st.sampled_from(["TCP4", "TCP6", "UNKNOWN"]))
    if kind == "UNKNOWN":
        # "PROXY UNKNOWN[ anything]\r\n": anything but LF; a CR inside is fine.
        tail = draw(st.none() | st.binary(max_size=V1_MAX_BYTES - 16).map(
            lambda b: b.replace(b"\n", b"")))
        wire = b"PROXY UNKNOWN" + (b"" if tail is None else b" " + tail) + b"\r\n"
        return wire, ProxyHeader(1, "PROXY", socket.AF_UNSPEC, 0, None, None, (), len(wire))
    v = 4 if kind == "TCP4" else 6
    src, dst = draw(st.ip_addresses(v=v)), draw(st.ip_addresses(v=v))
    sport, dport = draw(ports), draw(ports)
    exploded = draw(st.booleans())  # the decoder must canonicalise "0000:...:0001" to "::1"
    spell = (lambda a: a.exploded) if exploded else str
    wire = encode_v1(kind, spell(src), spell(dst), sport, dport)
    family = socket.AF_INET if v == 4 else socket.AF_INET6
    return wire, ProxyHeader(1, "PROXY", family, socket.SOCK_STREAM, (str(src), sport),
                             (str(dst), dport), (), len(wire))


unix_paths = st.builds(
    lambda abstract, name: ("\0" if abstract else "") + name, st.booleans(),
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40),
).filter(lambda p: len(p.encode()) <= 108 and not p.endswith("\0"))
tlv_lists = st.lists(st.tuples(st.integers(0, 255).filter(lambda t: t != TLV_CRC32C),
                               st.binary(max_size=64)), max_size=6)


@st.composite
def v2_headers(draw):
    command, fam, proto = draw(st.integers(0, 1)), draw(st.integers(0, 3)), draw(st.integers(0, 2))
    src = dst = expected_src = expected_dst = None
    if fam in (1, 2):
        v = 4 if fam == 1 else 6
        src = (str(draw(st.ip_addresses(v=v))), draw(ports))
        dst = (str(draw(st.ip_addresses(v=v))), draw(ports))
        expected_src, expected_dst = src, dst
    elif fam == 3:
        expected_src, expected_dst = draw(unix_paths), draw(unix_paths)
        src, dst = expected_src.encode(), expected_dst.encode()
    if command == 0:  # LOCAL: the block is on the wire, but the connection keeps its peer
        expected_src = expected_dst = None
    tlvs, crc = draw(tlv_lists), draw(st.booleans())
    wire = encode_v2(command, fam, proto, src, dst, tlvs, crc=crc)
    expected_tlvs = tuple(tlvs) + (((TLV_CRC32C, wire[-4:]),) if crc else ())
    return wire, ProxyHeader(2, "LOCAL" if command == 0 else "PROXY", FAMILIES[fam],
                             PROTOCOLS[proto], expected_src, expected_dst, expected_tlvs,
                             len(wire))


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def feed_bytewise(dec: ProxyDecoder, data: bytes) -> int:
    """Feed one byte at a time; return the index of the byte that raised (fails if none)."""
    for i in range(len(data)):
        try:
            dec.feed(data[i:i + 1])
        except ProxyProtocolError:
            return i
    pytest.fail(f"no ProxyProtocolError for {data!r}")


# -- round trips ----------------------------------------------------------------------------

@settings(max_examples=300)
@given(st.one_of(v1_headers(), v2_headers()), st.binary(max_size=300),
       st.lists(st.integers(0, 2000), max_size=12))
def test_any_header_in_any_chunks_decodes_to_what_was_encoded(case, payload, cuts):
    wire, expected = case
    dec = ProxyDecoder()
    cap = V1_MAX_BYTES if expected.version == 1 else dec.max_v2_bytes
    pieces = cut(wire + payload, cuts)
    fed = 0
    for i, piece in enumerate(pieces):
        got = dec.feed(piece)
        fed += len(piece)
        assert dec.buffered_bytes <= min(cap, len(wire))
        if got is not None:
            break
        assert fed < len(wire), "the header was all there but feed() returned None"
    assert got == expected
    assert dec.header is got and got.header_bytes == len(wire)
    # rest: exactly the payload bytes of the chunk that completed the header; the chunks
    # not fed yet hold the remainder, so nothing is lost and nothing is duplicated.
    assert dec.rest == (wire + payload)[len(wire):fed]
    assert dec.rest + b"".join(pieces[i + 1:]) == payload
    assert dec.buffered_bytes == 0


@given(st.one_of(v1_headers(), v2_headers()))
def test_one_byte_at_a_time(case):
    wire, expected = case
    dec = ProxyDecoder()
    results = [dec.feed(wire[i:i + 1]) for i in range(len(wire))]
    assert results[:-1] == [None] * (len(wire) - 1)
    assert results[-1] == expected and dec.rest == b""


@given(st.binary(max_size=200), st.sampled_from([b"", b"PROXY ", V2_SIGNATURE]),
       st.lists(st.integers(0, 300), max_size=8))
def test_garbage_gives_a_header_none_or_a_proxy_protocol_error(data, prefix, cuts):
    """h11's fuzz invariant: whatever the bytes, nothing but these three outcomes."""
    dec = ProxyDecoder()
    try:
        for piece in cut(prefix + data, cuts):
            if dec.feed(piece) is not None:
                break
    except ProxyProtocolError as exc:
        assert isinstance(exc.reason, ProxyReason) and "\n" not in str(exc)
        assert dec.buffered_bytes == 0
    assert dec.buffered_bytes <= dec.max_v2_bytes


def test_tlvs_keep_order_and_duplicates_and_tlv_returns_the_first():
    tlvs = [(TLV_ALPN, b"h2"), (0xE0, b""), (TLV_ALPN, b"http/1.1"), (TLV_AUTHORITY, b"ex.org")]
    h = ProxyDecoder().feed(encode_v2(1, 1, 1, ("10.0.0.1", 1), ("10.0.0.2", 2), tlvs))
    assert h.tlvs == tuple(tlvs)
    assert h.tlv(TLV_ALPN) == b"h2" and h.tlv(0xE0) == b"" and h.tlv(TLV_UNIQUE_ID) is None


def test_unix_paths_lose_their_trailing_nuls_only():
    wire = encode_v2(1, 3, 1, b"\0abstract", b"/run/app.sock")
    h = ProxyDecoder().feed(wire)
    assert (h.family, h.protocol) == (socket.AF_UNIX, socket.SOCK_STREAM)
    assert (h.source, h.destination) == ("\0abstract", "/run/app.sock")


def test_local_keeps_no_address_but_consumes_the_whole_header():
    wire = encode_v2(0, 1, 1, ("1.2.3.4", 5), ("6.7.8.9", 10), [(TLV_NOOP, b"xx")])
    dec = ProxyDecoder()
    h = dec.feed(wire + b"app")
    assert (h.command, h.source, h.destination) == ("LOCAL", None, None)
    assert h.tlvs == ((TLV_NOOP, b"xx"),) and dec.rest == b"app"


# -- the bytes real senders write -----------------------------------------------------------

def test_haproxy_send_proxy_v2_ipv4_tcp_bytes():
    # HAProxy 2.x, send-proxy-v2, no proxy-v2-options: 12-byte signature, 0x21 (v2, PROXY),
    # 0x11 (AF_INET, STREAM), length 12, 192.168.0.1 -> 192.168.0.11, 56324 -> 443.
    wire = bytes.fromhex("0d0a0d0a000d0a515549540a" "21" "11" "000c"
                         "c0a80001" "c0a8000b" "dc04" "01bb")
    dec = ProxyDecoder()
    h = dec.feed(wire + b"GET / HTTP/1.1\r\n")
    assert h == ProxyHeader(2, "PROXY", socket.AF_INET, socket.SOCK_STREAM,
                            ("192.168.0.1", 56324), ("192.168.0.11", 443), (), 28)
    assert dec.rest == b"GET / HTTP/1.1\r\n"


def test_haproxy_send_proxy_v1_line():
    dec = ProxyDecoder()
    h = dec.feed(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n")
    assert h == ProxyHeader(1, "PROXY", socket.AF_INET, socket.SOCK_STREAM,
                            ("192.168.0.1", 56324), ("192.168.0.11", 443), (), 47)
    assert dec.rest == b"GET / HTTP/1.1\r\n"
    h6 = ProxyDecoder().feed(b"PROXY TCP6 2001:DB8::0001 ::ffff:10.0.0.1 1 65535\r\n")
    assert h6.source == ("2001:db8::1", 1) and h6.destination[1] == 65535


def test_v1_unknown_with_the_longest_allowed_line():
    worst = b"PROXY UNKNOWN " + b"f" * 91 + b"\r\n"
    assert len(worst) == V1_MAX_BYTES
    h = ProxyDecoder().feed(worst)
    assert (h.family, h.source, h.header_bytes) == (socket.AF_UNSPEC, None, 107)


# -- refusals -------------------------------------------------------------------------------

V1_BAD = [
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", R.V1_MALFORMED),          # bare LF
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", R.V1_MALFORMED),       # two spaces
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", R.V1_MALFORMED),       # trailing space
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", R.V1_MALFORMED),          # four fields
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", R.V1_MALFORMED),      # six fields
    (b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", R.V1_MALFORMED),       # a tab is not a space
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", R.V1_MALFORMED),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", R.V1_MALFORMED),
    (b"PROXY UNKNOWNX\r\n", R.V1_MALFORMED),
    (b"PROXY UNKNOWN\r\r\n", R.V1_MALFORMED),
    (b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", R.BAD_ADDRESS),        # leading zero
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", R.BAD_ADDRESS),
    (b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n", R.BAD_ADDRESS),
    (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", R.BAD_ADDRESS),             # family mismatch
    (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", R.BAD_ADDRESS),         # family mismatch
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", R.BAD_ADDRESS),        # scope id
    (b"PROXY TCP6 ::1 ::g 1 2\r\n", R.BAD_ADDRESS),
    (b"PROXY TCP4 \xd9\xa1.2.3.4 5.6.7.8 1 2\r\n", R.BAD_ADDRESS),  # non-ASCII digit
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", R.BAD_ADDRESS),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", R.BAD_ADDRESS),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 00 2\r\n", R.BAD_ADDRESS),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", R.BAD_ADDRESS),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", R.BAD_ADDRESS),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1_0 2\r\n", R.BAD_ADDRESS),       # int() would take it
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 0x2\r\n", R.BAD_ADDRESS),
    (b"PROXY UNKNOWN " + b"f" * 92 + b"\r\n", R.V1_TOO_LONG),       # 108 bytes
    (b"PROXY TCP4 " + b"1" * 200, R.V1_TOO_LONG),
]
ADDR4 = (("1.2.3.4", 1), ("5.6.7.8", 2))


def with_body(header: bytes, extra: bytes) -> bytes:
    """``header`` with ``extra`` appended and its length field grown to cover it."""
    length = int.from_bytes(header[14:16], "big") + len(extra)
    return header[:14] + length.to_bytes(2, "big") + header[16:] + extra


V2_BAD = [
    (encode_v2(1, 1, 1, *ADDR4, ver=1), R.V2_BAD_VERSION),
    (encode_v2(1, 1, 1, *ADDR4, ver=3), R.V2_BAD_VERSION),
    (encode_v2(2, 1, 1, *ADDR4), R.V2_BAD_COMMAND),
    (encode_v2(0xF, 1, 1, *ADDR4), R.V2_BAD_COMMAND),
    (encode_v2(1, 4, 1), R.V2_BAD_FAMILY),
    (encode_v2(1, 1, 3, *ADDR4), R.V2_BAD_FAMILY),
    (encode_v2(1, 1, 1, *ADDR4, length_delta=-1), R.V2_TRUNCATED_ADDRESSES),
    (encode_v2(1, 2, 1, ("::1", 1), ("::2", 2), length_delta=-1), R.V2_TRUNCATED_ADDRESSES),
    (encode_v2(1, 3, 2, b"/a", b"/b", length_delta=-216), R.V2_TRUNCATED_ADDRESSES),
    (encode_v2(0, 1, 1, *ADDR4, length_delta=-12), R.V2_TRUNCATED_ADDRESSES),  # LOCAL too
    (with_body(encode_v2(1, 1, 1, *ADDR4), b"\x01\x00"), R.V2_BAD_TLV),  # TLV header cut
    (with_body(encode_v2(1, 1, 1, *ADDR4), b"\x01\x00\x05abc"), R.V2_BAD_TLV),  # value cut
    (with_body(encode_v2(1, 0, 0), bytes([TLV_CRC32C, 0, 3, 1, 2, 3])), R.V2_BAD_TLV),
    (with_body(encode_v2(1, 0, 0, crc=True), bytes([TLV_CRC32C, 0, 4, 0, 0, 0, 0])),
     R.V2_BAD_TLV),                                                      # two checksums
    (encode_v2(1, 0, 0, tlvs=[(TLV_ALPN, b"h2")], length_delta=-1), R.V2_BAD_TLV),
    (encode_v2(1, 1, 1, *ADDR4, length_delta=5000), R.V2_TOO_LONG),
]




@pytest.mark.parametrize("wire, reason", V1_BAD + V2_BAD,
                         ids=[f"{r.value}-{i}" for i, (_, r) in enumerate(V1_BAD + V2_BAD)])
def test_malformed_headers_are_refused_with_their_reason(wire, reason):
    dec = ProxyDecoder()
    with pytest.raises(ProxyProtocolError) as info:
        dec.feed(wire + b"payload")
    assert info.value.reason is reason
    assert reason.value in str(info.value) and "\n" not in str(info.value)
    assert dec.buffered_bytes == 0
    # Any chunking gives the same verdict.
    dec = ProxyDecoder()
    feed_bytewise(dec, wire + b"payload")
    with pytest.raises(ValueError, match="after a ProxyProtocolError"):
        dec.feed(b"x")


def test_a_bad_checksum_is_refused_and_a_good_one_accepted():
    wire = encode_v2(1, 1, 1, *ADDR4, tlvs=[(TLV_UNIQUE_ID, b"id-7")], crc=True)
    assert ProxyDecoder().feed(wire).tlv(TLV_CRC32C) == wire[-4:]
    for at in (13, 17, 32, len(wire) - 1):  # family byte, an address, a TLV value, the sum
        bad = bytearray(wire)
        bad[at] ^= 0x01
        with pytest.raises(ProxyProtocolError) as info:
            ProxyDecoder().feed(bytes(bad))
        assert info.value.reason is R.V2_BAD_CHECKSUM


def test_crc32c_matches_the_standard_check_value():
    assert _crc32c(b"123456789") == crc32c_bitwise(b"123456789") == 0xE3069283
    assert _crc32c(b"") == 0


@pytest.mark.parametrize("data, at", [
    (b"GET / HTTP/1.1\r\n", 0),
    (b"hello\n", 0),
    (b"\x16\x03\x01", 0),       # a TLS ClientHello
    (b"PUT /x", 1),
    (b"PROXY_TCP4", 5),
    (b"PROXX ", 4),
    (b"\r\n\r\n\x01", 4),
    (b"\r\n\r\n\x00\r\nQUIT\r", 11),
    (b"\r\n\r\n", None),        # a prefix of the v2 signature: wait, do not guess
])
def test_a_non_proxy_start_fails_at_its_first_mismatching_byte(data, at):
    dec = ProxyDecoder()
    if at is None:
        assert [dec.feed(data[i:i + 1]) for i in range(len(data))] == [None] * len(data)
        return
    assert feed_bytewise(dec, data + b"zzzz") == at
    with pytest.raises(ProxyProtocolError) as info:
        ProxyDecoder().feed(data)
    assert info.value.reason is R.NOT_PROXY


@pytest.mark.parametrize("data, at, reason", [
    (b"PROXY TCP5 ", 9, R.V1_MALFORMED),                   # no need to wait for the line
    (b"PROXY UNKNOWN\r\r", 14, R.V1_MALFORMED),
    (b"PROXY UNKNOWN " + b"a" * 200, 106, R.V1_TOO_LONG),  # the 107th byte, no CRLF yet
    (V2_SIGNATURE + b"\x31", 12, R.V2_BAD_VERSION),
    (V2_SIGNATURE + b"\x21\x51", 13, R.V2_BAD_FAMILY),
    (V2_SIGNATURE + b"\x21\x11\x0f\xff", 15, R.V2_TOO_LONG),  # before the body arrives
    (V2_SIGNATURE + b"\x21\x21\x00\x23", 15, R.V2_TRUNCATED_ADDRESSES),
])
def test_refusals_come_at_the_first_byte_that_decides(data, at, reason):
    dec = ProxyDecoder()
    assert feed_bytewise(dec, data + bytes(300)) == at
    with pytest.raises(ProxyProtocolError) as info:
        ProxyDecoder().feed(data)
    assert info.value.reason is reason


# -- bounds and misuse ----------------------------------------------------------------------

def test_max_v2_bytes_is_the_cap_and_must_fit_any_address_block():
    exact = with_body(encode_v2(1, 3, 1, b"/a", b"/b"), b"")
    assert len(exact) == 232
    assert ProxyDecoder(232).feed(exact).source == "/a"
    big = encode_v2(1, 1, 1, *ADDR4, tlvs=[(TLV_NOOP, bytes(300))])
    assert ProxyDecoder(len(big)).feed(big) is not None
    with pytest.raises(ProxyProtocolError) as info:
        ProxyDecoder(len(big) - 1).feed(big)
    assert info.value.reason is R.V2_TOO_LONG
    with pytest.raises(ValueError, match="below 232"):
        ProxyDecoder(231)
    with pytest.raises(TypeError):
        ProxyDecoder(4096.0)


@pytest.mark.parametrize("wire", [
    encode_v2(1, 1, 1, *ADDR4, tlvs=[(TLV_NOOP, bytes(4000))]),
    b"PROXY UNKNOWN " + b"a" * 80 + b"\r\n",
])
def test_the_decoder_never_holds_more_than_the_header(wire):
    dec = ProxyDecoder()
    cap = V1_MAX_BYTES if wire[:1] == b"P" else dec.max_v2_bytes
    held = []
    for i in range(len(wire) - 1):
        assert dec.feed(wire[i:i + 1]) is None
        held.append(dec.buffered_bytes)
    assert held == list(range(1, len(wire)))  # exactly what arrived, never a byte more
    assert max(held) < min(len(wire), cap)
    # The completing chunk carries a large payload: it goes to rest, never to the buffer.
    assert dec.feed(wire[-1:] + bytes(1 << 20)) is not None
    assert dec.buffered_bytes == 0 and len(dec.rest) == 1 << 20


def test_rest_owns_its_bytes():
    chunk = bytearray(b"PROXY UNKNOWN\r\nhello")
    dec = ProxyDecoder()
    dec.feed(memoryview(chunk))
    chunk[:] = bytes(len(chunk))  # the caller reuses its buffer (a pool chunk)
    assert dec.rest == b"hello" and isinstance(dec.rest, bytes)


def test_feeding_after_completion_is_an_error_and_changes_nothing():
    dec = ProxyDecoder()
    h = dec.feed(b"PROXY UNKNOWN\r\nab")
    with pytest.raises(ValueError, match="complete") as info:
        dec.feed(b"cd")
    assert not isinstance(info.value, ProxyProtocolError)
    assert dec.header is h and dec.rest == b"ab"


def test_empty_chunks_and_other_buffer_types():
    dec = ProxyDecoder()
    assert dec.feed(b"") is None and dec.feed(bytearray()) is None
    assert dec.feed(memoryview(b"PROXY ")) is None and dec.buffered_bytes == 6
    import array
    assert dec.feed(array.array("B", b"UNKNOWN\r\n")) is not None
    with pytest.raises(TypeError, match="bytes-like"):
        ProxyDecoder().feed("PROXY UNKNOWN\r\n")


def test_reasons_are_few_stable_words():
    assert {r.value for r in ProxyReason} == {
        "not_proxy", "v1_too_long", "v1_malformed", "bad_address", "v2_bad_version",
        "v2_bad_command", "v2_bad_family", "v2_too_long", "v2_truncated_addresses",
        "v2_bad_tlv", "v2_bad_checksum"}
