"""HPACK (RFC 7541) as much as :mod:`broker.cli.wire` needs: header fields out as
literals (never indexed, never Huffman-coded), header blocks in with the static and
dynamic tables. A Huffman-coded string is :class:`Unsupported` (gRPC's core sends
its strings raw), and the command is then run over grpcio.
"""

from __future__ import annotations


class Unsupported(Exception):
    """Something this client does not speak; the command is run over grpcio instead."""


class ProtocolError(Exception):
    """The peer broke HTTP/2 or gRPC framing."""


#: HPACK's static table (RFC 7541, Appendix A): index 1 is element 0.
STATIC_TABLE = (
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
)
#: SETTINGS_HEADER_TABLE_SIZE's initial value: the daemon's encoder may index this much.
TABLE_SIZE = 4096


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541, 5.1) in a first byte whose high bits are ``first``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    """Literal header fields without indexing, new names, raw strings (RFC 7541, 6.2.2)."""
    out = bytearray()
    for name, value in headers:
        raw_name, raw_value = name.encode("ascii"), value.encode("ascii")
        out += b"\x00" + _hpack_int(len(raw_name), 7) + raw_name
        out += _hpack_int(len(raw_value), 7) + raw_value
    return bytes(out)


class HeaderDecoder:
    """HPACK decoding (RFC 7541) with the connection's dynamic table; no Huffman."""

    def __init__(self) -> None:
        self.table: list[tuple[str, str]] = []
        self.size = 0
        self.max_size = TABLE_SIZE

    def _entry(self, index: int) -> tuple[str, str]:
        if 1 <= index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dynamic = index - len(STATIC_TABLE) - 1
        if 0 <= dynamic < len(self.table):
            return self.table[dynamic]
        raise ProtocolError(f"header table index {index} out of range")

    def _evict(self) -> None:
        while self.size > self.max_size:
            name, value = self.table.pop()
            self.size -= 32 + len(name) + len(value)

    def _add(self, name: str, value: str) -> None:
        self.table.insert(0, (name, value))
        self.size += 32 + len(name) + len(value)
        self._evict()

    @staticmethod
    def _int(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
        limit = (1 << prefix_bits) - 1
        if pos >= len(block):
            raise ProtocolError("header block ends inside an integer")
        value = block[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            if pos >= len(block) or shift > 28:
                raise ProtocolError("bad integer in a header block")
            byte = block[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos

    def _string(self, block: bytes, pos: int) -> tuple[str, int]:
        if pos >= len(block):
            raise ProtocolError("header block ends before a string")
        huffman = block[pos] & 0x80
        length, pos = self._int(block, pos, 7)
        if huffman:
            raise Unsupported("a Huffman-coded header string")
        if pos + length > len(block):
            raise ProtocolError("header block ends inside a string")
        return block[pos : pos + length].decode("latin-1"), pos + length

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        pos = 0
        while pos < len(block):
            first = block[pos]
            if first & 0x80:  # indexed field
                index, pos = self._int(block, pos, 7)
                out.append(self._entry(index))
                continue
            if first & 0xE0 == 0x20:  # dynamic table size update
                self.max_size, pos = self._int(block, pos, 5)
                if self.max_size > TABLE_SIZE:
                    raise ProtocolError("header table size above the one we allowed")
                self._evict()
                continue
            indexing = bool(first & 0x40)  # else without indexing / never indexed
            index, pos = self._int(block, pos, 6 if indexing else 4)
            if index:
                name = self._entry(index)[0]
            else:
                name, pos = self._string(block, pos)
            value, pos = self._string(block, pos)
            if indexing:
                self._add(name, value)
            out.append((name, value))
        return out
