"""The PROXY protocol header (HAProxy's doc/proxy-protocol.txt, v1 text and v2 binary): a
sans-IO decoder for the first bytes a peer sends on a listener that requires one.

Owns the parsing only: ``ProxyDecoder.feed`` takes chunks, returns a ``ProxyHeader`` once the
header is complete and keeps the bytes after it in ``rest``. It never sees a socket, the loop
or a clock, and has no encoder. Wiring it before a connection's codec is the caller's job.

Peer errors raise ``ProxyProtocolError`` (a ``ValueError``) whose ``reason`` is a
``ProxyReason``; the values are the words stats count, so they stay few and stable:

  not_proxy               the first bytes are neither ``PROXY `` nor the 12-byte v2 signature
  v1_too_long             no CRLF within 107 bytes (the spec's longest line, CRLF included)
  v1_malformed            a v1 line with a bare LF, an unknown protocol word, or not exactly
                          five fields separated by single spaces
  bad_address             a v1 address or port that is not valid for the line's family
  v2_bad_version          v2 version nibble is not 2
  v2_bad_command          v2 command is neither LOCAL (0) nor PROXY (1)
  v2_bad_family           v2 family nibble over 3 (AF_UNIX) or protocol nibble over 2 (DGRAM)
  v2_too_long             16 + length exceeds ``max_v2_bytes``
  v2_truncated_addresses  the length cannot hold the family's address block (12/36/216 bytes)
  v2_bad_tlv              a truncated TLV, or a CRC32C TLV that is not 4 bytes or not alone
  v2_bad_checksum         the CRC32C TLV does not match the header
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import socket

__all__ = [
    "ProxyDecoder", "ProxyHeader", "ProxyProtocolError", "ProxyReason", "V1_MAX_BYTES",
    "V2_SIGNATURE", "TLV_ALPN", "TLV_AUTHORITY", "TLV_CRC32C", "TLV_NOOP", "TLV_UNIQUE_ID",
    "TLV_SSL", "TLV_NETNS",
]

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: "PROXY UNKNOWN ffff:...:ffff ffff:...:ffff 65535 65535\r\n": the spec's worst case.
V1_MAX_BYTES = 107
_V2_FIXED = 16
#: Address block bytes by v2 family nibble: UNSPEC, INET, INET6, UNIX.
_V2_ADDRESS_BYTES = (0, 12, 36, 216)
_V2_FAMILIES = (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
_V2_PROTOCOLS = (0, socket.SOCK_STREAM, socket.SOCK_DGRAM)
_V2_MIN_LIMIT = _V2_FIXED + _V2_ADDRESS_BYTES[3]
#: The ways a v1 line may go on after ``PROXY ``; checked as bytes arrive, so a line that
#: cannot be one fails at its first wrong byte instead of after 107 bytes.
_V1_STARTS = (b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN ", b"PROXY UNKNOWN\r\n")
_V1_START_BYTES = max(map(len, _V1_STARTS))

# The v2 TLV types the spec names (section 2.2).
TLV_ALPN, TLV_AUTHORITY, TLV_CRC32C, TLV_NOOP, TLV_UNIQUE_ID = 0x01, 0x02, 0x03, 0x04, 0x05
TLV_SSL, TLV_NETNS = 0x20, 0x30

_Address = tuple[str, int] | str | None


class ProxyReason(enum.Enum):
    """Why a PROXY header was refused; the values are the words stats count per reason."""

    NOT_PROXY = "not_proxy"
    V1_TOO_LONG = "v1_too_long"
    V1_MALFORMED = "v1_malformed"
    BAD_ADDRESS = "bad_address"
    V2_BAD_VERSION = "v2_bad_version"
    V2_BAD_COMMAND = "v2_bad_command"
    V2_BAD_FAMILY = "v2_bad_family"
    V2_TOO_LONG = "v2_too_long"
    V2_TRUNCATED_ADDRESSES = "v2_truncated_addresses"
    V2_BAD_TLV = "v2_bad_tlv"
    V2_BAD_CHECKSUM = "v2_bad_checksum"


class ProxyProtocolError(ValueError):
    """A peer's bytes are not a valid PROXY header; ``reason`` says which rule they broke."""

    def __init__(self, reason: ProxyReason, message: str) -> None:
        super().__init__(f"PROXY header refused ({reason.value}): {message}")
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A decoded header. ``source``/``destination`` are ``(ip, port)`` for INET/INET6 (the ip
    as ``ipaddress`` spells it), a path ``str`` for UNIX, and ``None`` when the header names no
    address (v1 UNKNOWN, v2 UNSPEC, any LOCAL): the connection then keeps its real peer."""

    version: int                    #: 1 or 2
    command: str                    #: "PROXY" or "LOCAL" (v1 is always "PROXY")
    family: int                     #: socket.AF_INET, AF_INET6, AF_UNIX or AF_UNSPEC
    protocol: int                   #: socket.SOCK_STREAM, SOCK_DGRAM or 0 (unspecified)
    source: _Address
    destination: _Address
    tlvs: tuple[tuple[int, bytes], ...]  #: every v2 TLV, in wire order; () for v1
    header_bytes: int               #: how many bytes the header took, signature included

    def tlv(self, type_: int) -> bytes | None:
        """The value of the first TLV of ``type_``, or None if there is none."""
        for t, value in self.tlvs:
            if t == type_:
                return value
        return None


def _first_mismatch(seen: bytes | bytearray, expected: bytes) -> int:
    """The index of the first byte of ``seen`` that differs from ``expected``, or -1."""
    for i in range(min(len(seen), len(expected))):
        if seen[i] != expected[i]:
            return i
    return -1


def _crc32c_entry(c: int) -> int:
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # the Castagnoli polynomial, reflected
    return c


_CRC32C_TABLE = tuple(_crc32c_entry(n) for n in range(256))


def _crc32c(data: bytes | bytearray) -> int:
    """CRC-32C (Castagnoli), the checksum of the v2 CRC32C TLV; zlib only has CRC-32."""
    table, crc = _CRC32C_TABLE, 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_R = ProxyReason
_READING, _DONE, _FAILED = 0, 1, 2


def _byte(buf: bytes | bytearray, at: int) -> bytes:
    return bytes(buf[at: at + 1])


class ProxyDecoder:
    """Decodes one PROXY header (v1 or v2) from the first bytes of a connection.

    ``feed(data)`` takes a chunk of any size and returns None while more bytes are needed,
    then the ``ProxyHeader``. The bytes after the header are in ``rest`` (a ``bytes`` the
    decoder owns; they belong to the application). It holds at most the header itself:
    107 bytes for v1, 16 + length for v2, refused past ``max_v2_bytes``. There is no
    "maybe no header" mode: the first bytes must be a signature, and a header that cannot
    be valid raises ``ProxyProtocolError`` at the first byte that shows it.
    """

    __slots__ = ("_limit", "_buf", "_state", "_version", "_need", "_scan", "header", "rest")

    def __init__(self, max_v2_bytes: int = 4096) -> None:
        if not isinstance(max_v2_bytes, int) or isinstance(max_v2_bytes, bool):
            raise TypeError(f"max_v2_bytes must be an int, not {type(max_v2_bytes).__name__}")
        if max_v2_bytes < _V2_MIN_LIMIT:
            # Anything smaller could refuse a valid AF_UNIX header that has no TLV at all.
            raise ValueError(f"max_v2_bytes {max_v2_bytes} is below {_V2_MIN_LIMIT} "
                             "(16 + the 216-byte AF_UNIX address block)")
        self._limit = max_v2_bytes
        self._buf = bytearray()
        self._state = _READING
        self._version = 0       # 0 until the first byte says which
        self._need = _V2_FIXED  # v2: the bytes the header takes, once its length is known
        self._scan = 0          # v1: where the next search for LF starts
        #: The decoded header, once ``feed`` has returned it; None before.
        self.header: ProxyHeader | None = None
        #: The bytes that followed the header in the chunk that completed it; b"" before.
        self.rest = b""

    @property
    def buffered_bytes(self) -> int:
        """How many bytes of an incomplete header the decoder holds (0 once done or failed)."""
        return len(self._buf)

    @property
    def max_v2_bytes(self) -> int:
        return self._limit

    def feed(self, data: bytes | bytearray | memoryview) -> ProxyHeader | None:
        """Add ``data``; return the header once complete, else None (``b""`` changes nothing).

        Raises ``ProxyProtocolError`` for bad peer bytes (the decoder is then failed),
        ``ValueError`` if called once it completed or failed, ``TypeError`` for a non-bytes.
        The caller keeps ``data``: nothing here refers to it after the call returns.
        """
        if self._state != _READING:
            raise ValueError("feed() after the PROXY header was complete (what followed it is "
                             "in .rest)" if self._state == _DONE else
                             "feed() after a ProxyProtocolError")
        try:
            view = memoryview(data)
        except TypeError:
            raise TypeError(f"feed() takes bytes-like data, not {type(data).__name__}") from None
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if not view:
            return None
        try:
            if self._version == 0:
                first = view[0]
                if first not in (V1_SIGNATURE[0], V2_SIGNATURE[0]):
                    raise ProxyProtocolError(_R.NOT_PROXY, f"first byte {bytes([first])!r} "
                                             "starts neither v1 'PROXY ' nor v2 '\\r\\n...'")
                self._version = 1 if first == V1_SIGNATURE[0] else 2
            return self._feed_v1(view) if self._version == 1 else self._feed_v2(view)
        except ProxyProtocolError:
            self._state, self._buf = _FAILED, bytearray()
            raise

    def _finish(self, header: ProxyHeader, view: memoryview, used: int) -> ProxyHeader:
        self._state, self._buf = _DONE, bytearray()
        self.header, self.rest = header, bytes(view[used:])
        return header

    def _feed_v1(self, view: memoryview) -> ProxyHeader | None:
        buf = self._buf
        before = len(buf)
        buf += view[: V1_MAX_BYTES - before]
        if before < _V1_START_BYTES:
            head = buf[:_V1_START_BYTES]
            at = _first_mismatch(head, V1_SIGNATURE)
            if at >= 0:
                raise ProxyProtocolError(_R.NOT_PROXY, f"byte {at} is {_byte(head, at)!r}, "
                                         f"not {_byte(V1_SIGNATURE, at)!r} of 'PROXY '")
            if all(_first_mismatch(head, s) >= 0 for s in _V1_STARTS):
                raise ProxyProtocolError(_R.V1_MALFORMED, f"{bytes(head)!r} starts none of "
                                         "'PROXY TCP4 ', 'PROXY TCP6 ', 'PROXY UNKNOWN'")
        lf = buf.find(b"\n", self._scan)
        if lf < 0:
            if len(buf) >= V1_MAX_BYTES:
                raise ProxyProtocolError(_R.V1_TOO_LONG, f"no CRLF within {V1_MAX_BYTES} bytes")
            self._scan = len(buf)
            return None
        return self._finish(_parse_v1(bytes(buf[: lf + 1])), view, lf + 1 - before)

    def _feed_v2(self, view: memoryview) -> ProxyHeader | None:
        buf, used = self._buf, 0
        while True:
            before = len(buf)
            take = view[used: used + self._need - before]
            buf += take
            used += len(take)
            if before < _V2_FIXED:
                self._check_v2_fixed()
            if len(buf) == self._need:
                return self._finish(_parse_v2(bytes(buf)), view, used)
            if used == len(view):
                return None
            # Else the fixed part just gave the length: go round to take the rest.

    def _check_v2_fixed(self) -> None:
        """Check as much of the 16-byte fixed part as has arrived; learn the length."""
        buf = self._buf
        at = _first_mismatch(buf, V2_SIGNATURE)
        if at >= 0:
            raise ProxyProtocolError(_R.NOT_PROXY, f"byte {at} is {_byte(buf, at)!r}, "
                                     f"not {_byte(V2_SIGNATURE, at)!r} of the v2 signature")
        if len(buf) > 12 and buf[12] >> 4 != 2:
            raise ProxyProtocolError(_R.V2_BAD_VERSION, f"version {buf[12] >> 4}, not 2")
        if len(buf) > 12 and buf[12] & 0xF > 1:
            raise ProxyProtocolError(_R.V2_BAD_COMMAND,
                                     f"command {buf[12] & 0xF} is neither LOCAL 0 nor PROXY 1")
        if len(buf) > 13 and (buf[13] >> 4 > 3 or buf[13] & 0xF > 2):
            raise ProxyProtocolError(_R.V2_BAD_FAMILY,
                                     f"family/protocol byte {buf[13]:#04x} is not in the spec")
        if len(buf) >= _V2_FIXED:
            length = int.from_bytes(buf[14:16], "big")
            if _V2_FIXED + length > self._limit:
                raise ProxyProtocolError(_R.V2_TOO_LONG, f"header of {_V2_FIXED + length} "
                                         f"bytes exceeds max_v2_bytes {self._limit}")
            block = _V2_ADDRESS_BYTES[buf[13] >> 4]
            if length < block:
                raise ProxyProtocolError(_R.V2_TRUNCATED_ADDRESSES, f"length {length} cannot "
                                         f"hold the {block}-byte address block of {buf[13]:#04x}")
            self._need = _V2_FIXED + length


def _v1_error(reason: ProxyReason, what: str, field: bytes) -> ProxyProtocolError:
    return ProxyProtocolError(reason, f"v1 {what} {field[:48]!r}")


def _v1_port(field: bytes) -> int:
    # Decimal without leading zeros (the spec). bytes.isdigit() is ASCII-only, so int() is
    # never handed "+1", " 1" or "1_0", which it would accept.
    if not (field.isdigit() and len(field) <= 5 and (field == b"0" or field[:1] != b"0")
            and int(field) <= 65535):
        raise _v1_error(_R.BAD_ADDRESS, "port", field)
    return int(field)


def _v1_ip(field: bytes, six: bool) -> str:
    try:
        text = field.decode("ascii")
        if six:
            if "%" in text:  # ipaddress takes scope ids (fe80::1%eth0); the spec has none
                raise ValueError(text)
            return str(ipaddress.IPv6Address(text))
        return str(ipaddress.IPv4Address(text))  # refuses leading zeros ("1.2.3.04")
    except ValueError:  # UnicodeDecodeError is one
        raise _v1_error(_R.BAD_ADDRESS, "TCP6 address" if six else "TCP4 address",
                        field) from None


def _parse_v1(line: bytes) -> ProxyHeader:
    """``line`` runs from ``PROXY `` to the first LF, inclusive; its start is checked."""
    if line[-2:] != b"\r\n":
        raise _v1_error(_R.V1_MALFORMED, "line ends in a bare LF:", line)
    body = line[len(V1_SIGNATURE): -2]
    if body == b"UNKNOWN" or body.startswith(b"UNKNOWN "):
        # The spec: the receiver ignores whatever follows UNKNOWN up to the CRLF.
        return ProxyHeader(1, "PROXY", socket.AF_UNSPEC, 0, None, None, (), len(line))
    fields = body.split(b" ")
    if len(fields) != 5:
        raise _v1_error(_R.V1_MALFORMED, f"line has {len(fields)} fields after 'PROXY ' "
                        "split at single spaces, not 5:", line)
    proto, src, dst, sport, dport = fields
    six = proto == b"TCP6"  # else TCP4: _V1_STARTS admitted nothing else
    return ProxyHeader(1, "PROXY", socket.AF_INET6 if six else socket.AF_INET,
                       socket.SOCK_STREAM, (_v1_ip(src, six), _v1_port(sport)),
                       (_v1_ip(dst, six), _v1_port(dport)), (), len(line))


def _v2_unix_path(raw: bytes) -> str:
    # Trailing NULs pad the 108-byte sun_path; a leading NUL (an abstract name) is kept.
    return raw.rstrip(b"\0").decode("utf-8", "surrogateescape")


def _v2_inet(hdr: bytes, fam: int) -> tuple[tuple[str, int], tuple[str, int]]:
    n, ip = (4, ipaddress.IPv4Address) if fam == 1 else (16, ipaddress.IPv6Address)
    p = _V2_FIXED + 2 * n  # the two ports follow the two addresses
    return ((str(ip(hdr[16: 16 + n])), int.from_bytes(hdr[p: p + 2], "big")),
            (str(ip(hdr[16 + n: p])), int.from_bytes(hdr[p + 2: p + 4], "big")))


def _parse_v2(hdr: bytes) -> ProxyHeader:
    """``hdr`` is the whole header, its fixed part checked by ``_check_v2_fixed``."""
    local = hdr[12] & 0xF == 0
    fam, proto = hdr[13] >> 4, hdr[13] & 0xF
    source = destination = None
    if not local and fam in (1, 2):
        source, destination = _v2_inet(hdr, fam)
    elif not local and fam == 3:
        source, destination = _v2_unix_path(hdr[16:124]), _v2_unix_path(hdr[124:232])
    tlvs, crc_at, pos = [], [], _V2_FIXED + _V2_ADDRESS_BYTES[fam]
    while pos < len(hdr):
        left = len(hdr) - pos - 3
        if left < 0:
            raise ProxyProtocolError(_R.V2_BAD_TLV, f"TLV at byte {pos} is cut short: "
                                     f"{left + 3} bytes left of its 3-byte type and length")
        type_, size = hdr[pos], int.from_bytes(hdr[pos + 1: pos + 3], "big")
        if size > left:
            raise ProxyProtocolError(_R.V2_BAD_TLV, f"TLV {type_:#04x} at byte {pos} claims "
                                     f"{size} bytes; the header has {left} left")
        if type_ == TLV_CRC32C:
            if size != 4:
                raise ProxyProtocolError(_R.V2_BAD_TLV, f"CRC32C TLV of {size} bytes, not 4")
            crc_at.append(pos + 3)
        tlvs.append((type_, hdr[pos + 3: pos + 3 + size]))
        pos += 3 + size
    if len(crc_at) > 1:  # which fields would the sender have zeroed? Refuse, never guess.
        raise ProxyProtocolError(_R.V2_BAD_TLV, f"{len(crc_at)} CRC32C TLVs, not 1")
    if crc_at:
        at = crc_at[0]
        sent = int.from_bytes(hdr[at: at + 4], "big")  # network order, as HAProxy writes it
        summed = _crc32c(hdr[:at] + bytes(4) + hdr[at + 4:])  # summed with the field zeroed
        if sent != summed:
            raise ProxyProtocolError(_R.V2_BAD_CHECKSUM, f"CRC32C TLV says {sent:#010x}, "
                                     f"the header sums to {summed:#010x}")
    return ProxyHeader(2, "LOCAL" if local else "PROXY", _V2_FAMILIES[fam],
                       _V2_PROTOCOLS[proto], source, destination, tuple(tlvs), len(hdr))
