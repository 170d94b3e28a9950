"""Frames from the cloud, as the agent reads them (docs/PROTOCOL.md, "Frames the agent refuses").

BoundedFrameReader reads the WebSocket: a message over 1 MiB is skipped unread, and binary and
non-UTF-8 messages never reach the request parser (they arrive as a RefusedMessage). ParsedFrame
reads a text message's JSON and notices a repeated key, which json would silently keep the last of.
"""

from __future__ import annotations

import collections
import json
from typing import Any, Dict, List, Optional, Tuple

import websocket

LOGGED_FRAME_CHARS = 120  # of a frame from the cloud shown in a log line
MAX_MESSAGE_BYTES = 1024 * 1024  # a message from the cloud (all its fragments together) over this is skipped


class RefusedMessage(bytes):
    """Stands in for a message BoundedFrameReader refused (binary, over the limit, not UTF-8): its
    first bytes, for the log line, and why. WebSocketApp hands a binary frame's data to on_message
    untouched, so this arrives there as itself; nothing the cloud sends can produce one."""

    reason: str

    def __new__(cls, preview: bytes, reason: str) -> "RefusedMessage":
        message = super().__new__(cls, preview)
        message.reason = reason
        return message


class BoundedFrameReader(websocket.frame_buffer):
    """websocket-client's frame reader with a limit: a message (all its fragments together) over
    max_bytes is skipped in 64 KiB pieces as it arrives, never held, and so is every binary message;
    only complete, valid UTF-8 text messages of at most max_bytes reach the library as text.

    Everything else is the library's: header, length and mask parsing (recv_header, recv_length,
    recv_mask) and socket reads (recv_strict). The decision is made from the header's length, before
    any of the payload is read. Fragments are put together here, so the library only ever sees
    whole messages (fin=1) and control frames (returned at once, also between fragments, so pings
    are still answered); what it would otherwise collect without a bound never reaches it.

    Why the hook is safe: websocket.WebSocket reads every frame through
    `self.frame_buffer.recv_frame()` (WebSocket.recv_frame) and nothing else reads the socket once
    the handshake is done. WebSocketApp.run_forever calls on_open after the handshake and before its
    dispatcher reads the first frame, on the thread that then reads, so RelayLink._on_open swaps the
    reader in while nothing is being read; any bytes already buffered are carried over.
    websocket-client is pinned (requirements.txt), and tests/test_relay_frames.py checks the swap
    takes effect.
    """

    # What is kept of a refused message for its log line: more than the line shows, so the key is
    # masked before the line is cut (a key starting within the shown part ends within the kept one).
    PREVIEW_BYTES = LOGGED_FRAME_CHARS + 512
    SKIP_BYTES = 64 * 1024
    CONTROL_MAX_BYTES = 125  # RFC 6455 5.5

    def __init__(self, original: websocket.frame_buffer, max_bytes: int = MAX_MESSAGE_BYTES):
        super().__init__(original.recv, original.skip_utf8_validation)
        self.recv_buffer = original.recv_buffer
        self.max_bytes = max_bytes
        self._opcode: Optional[int] = None  # TEXT or BINARY while a message is being read
        self._parts: List[bytes] = []
        self._size = 0
        self._preview = b""
        self._refused: Optional[str] = None  # "binary" or "too big": the rest of the message is skipped

    def recv_frame(self) -> websocket.ABNF:
        with self.lock:
            while True:
                self.recv_header()
                fin, rsv1, rsv2, rsv3, opcode, has_mask, _ = self.header
                self.recv_length()
                self.recv_mask()
                length, mask = self.length, (self.mask_value if has_mask else None)
                self.clear()
                if opcode >= 0x8:  # close, ping, pong
                    if length > self.CONTROL_MAX_BYTES:
                        raise websocket.WebSocketProtocolException(f"control frame of {length} bytes")
                    frame = websocket.ABNF(fin, rsv1, rsv2, rsv3, opcode, has_mask, self._payload(length, mask))
                    frame.validate(self.skip_utf8_validation)
                    return frame
                if rsv1 or rsv2 or rsv3 or opcode not in websocket.ABNF.OPCODES:
                    raise websocket.WebSocketProtocolException(
                        f"invalid frame (opcode {opcode}, reserved bits {rsv1}{rsv2}{rsv3})"
                    )
                self._begin(opcode)
                self._size += length
                if self._refused is None and self._opcode == websocket.ABNF.OPCODE_BINARY:
                    self._refuse("binary")
                elif self._refused is None and self._size > self.max_bytes:
                    self._refuse("too big")
                if self._refused is None:
                    self._parts.append(self._payload(length, mask))
                else:
                    wanted = min(length, self.PREVIEW_BYTES - len(self._preview))
                    if wanted > 0:
                        self._preview += self._payload(wanted, mask)
                    self._skip(length - max(wanted, 0))
                if fin:
                    return self._message()

    def _begin(self, opcode: int) -> None:
        if opcode == websocket.ABNF.OPCODE_CONT:
            if self._opcode is None:
                raise websocket.WebSocketProtocolException("continuation frame outside a message")
            return
        if self._opcode is not None:
            raise websocket.WebSocketProtocolException("a new message began before the last one ended")
        self._opcode, self._size, self._parts, self._preview, self._refused = opcode, 0, [], b"", None

    def _refuse(self, why: str) -> None:
        self._refused = why
        self._preview = b"".join(self._parts)[: self.PREVIEW_BYTES]
        self._parts = []

    def _payload(self, length: int, mask: Optional[bytes]) -> bytes:
        data = self.recv_strict(length)
        return websocket.ABNF.mask(mask, data) if mask else data

    def _skip(self, length: int) -> None:
        while length > 0:
            length -= len(self.recv_strict(min(length, self.SKIP_BYTES)))

    def _message(self) -> websocket.ABNF:
        opcode, size, refused, preview = self._opcode, self._size, self._refused, self._preview
        payload = b"".join(self._parts)
        self._opcode, self._parts, self._preview, self._refused = None, [], b"", None
        reason = None
        if refused == "binary":
            reason = f"binary frame, {size:,} bytes"
        elif refused == "too big":
            reason = f"{size:,} bytes, over the {self.max_bytes / (1024 * 1024):g} MiB limit"
        else:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError as exc:
                reason = f"text that is not valid UTF-8 (byte {exc.start})"
                preview = payload[: self.PREVIEW_BYTES]
        if reason is not None:
            return websocket.ABNF(1, 0, 0, 0, websocket.ABNF.OPCODE_BINARY, 0, RefusedMessage(preview, reason))
        return websocket.ABNF(1, 0, 0, 0, opcode, 0, payload)


class ParsedFrame:
    """A frame's JSON (json's object_pairs_hook sees every key, so a repeated one is noticed instead
    of silently keeping the last) and the field path of a repeated key, if there is one."""

    def __init__(self, text: str):
        repeated: Dict[int, List[str]] = {}  # id(object) -> its repeated keys, in order

        def pairs_hook(pairs: List[Tuple[str, Any]]) -> dict:
            obj = dict(pairs)
            if len(obj) < len(pairs):
                seen: set = set()
                for key, _ in pairs:
                    if key in seen:
                        repeated.setdefault(id(obj), []).append(key)
                    seen.add(key)
            return obj

        self.value: Any = json.loads(text, object_pairs_hook=pairs_hook)
        self.repeated_id = isinstance(self.value, dict) and "id" in repeated.get(id(self.value), ())
        self.repeated_path: Optional[str] = self._first_path(self.value, repeated) if repeated else None

    @staticmethod
    def _first_path(root: Any, repeated: Dict[int, List[str]]) -> str:
        """The path of a repeated key, the shallowest first, then in document order (breadth first and
        without recursion: the JSON may nest as deep as json allows)."""
        queue: "collections.deque" = collections.deque([("", root)])
        while queue:
            path, value = queue.popleft()
            if isinstance(value, dict):
                keys = repeated.get(id(value))
                if keys:
                    return f"{path}.{keys[0]}" if path else keys[0]
                queue.extend((f"{path}.{k}" if path else k, v) for k, v in value.items())
            elif isinstance(value, list):
                queue.extend((f"{path}[{n}]", v) for n, v in enumerate(value))
        return "?"
