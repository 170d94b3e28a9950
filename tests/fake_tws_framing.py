"""The fake TWS's framing: the `API\\0` prefix and version range of the handshake, length-prefixed
messages and their NUL-terminated text fields, both ways. What goes inside a message is
`fake_tws_wire.py`'s (text) and `fake_tws_proto.py`'s (protobuf).
"""

from __future__ import annotations

import re
import struct
from typing import Iterable, List, Optional, Tuple

from tests.fake_tws_requests import ProtocolError

API_PREFIX = b"API\0"


_VERSION_RANGE = re.compile(r"v(\d+)(?:\.\.(\d+))?")


def field_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # sizes and quantities read as ints or Decimals
    return str(value)


def fields_payload(fields: Iterable) -> bytes:
    return "".join(field_text(f) + "\0" for f in fields).encode("utf-8")


def frame(fields: Iterable) -> bytes:
    """One text message as sent before the handshake or below 201: 4-byte big-endian length,
    then NUL-terminated fields."""
    payload = fields_payload(fields)
    return struct.pack(">I", len(payload)) + payload


class FrameReader:
    """Splits a byte stream into length-prefixed payloads."""

    def __init__(self):
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def take_prefix(self, prefix: bytes) -> Optional[bool]:
        """Consume `prefix` when the buffer starts with it: True; wrong bytes: False; too few: None."""
        if len(self._buffer) < len(prefix):
            return None if prefix.startswith(self._buffer) else False
        if not self._buffer.startswith(prefix):
            return False
        self._buffer = self._buffer[len(prefix) :]
        return True

    def payloads(self) -> List[bytes]:
        found = []
        while len(self._buffer) >= 4:
            size = struct.unpack(">I", self._buffer[:4])[0]
            if len(self._buffer) < 4 + size:
                break
            found.append(self._buffer[4 : 4 + size])
            self._buffer = self._buffer[4 + size :]
        return found


def split_fields(payload: bytes) -> List[str]:
    """A message's NUL-terminated fields (the handshake's version text has no terminator)."""
    return payload.decode("utf-8", errors="replace").split("\0")[:-1]


def parse_version_range(text: str) -> Tuple[int, int, str]:
    """'v100..200 +PACEAPI' -> (100, 200, '+PACEAPI')."""
    head, _, options = text.partition(" ")
    match = _VERSION_RANGE.fullmatch(head)
    if not match:
        raise ProtocolError(f"bad version range {text!r}")
    low = int(match.group(1))
    return low, int(match.group(2) or low), options
