"""Just enough of RFC 6455 framing for a relay to close a WebSocket politely.

The relay passes bytes through unchanged; it never decodes messages. To say "going away"
(close code 1001) it must put a Close frame *between* two frames of the stream, never
inside one, so it follows each direction's frame boundaries from the frame headers alone.
"""

from __future__ import annotations

import os
import struct

OPCODE_CLOSE = 0x8
GOING_AWAY = 1001


class FrameTracker:
    """Follows frame boundaries in one direction of a WebSocket stream, fed in arbitrary pieces."""

    __slots__ = ("remaining", "header", "saw_close")

    def __init__(self) -> None:
        self.remaining = 0  # payload bytes of the current frame still to come
        self.header = bytearray()  # a frame header received in part
        self.saw_close = False  # this side already sent a Close frame

    @property
    def at_boundary(self) -> bool:
        """True when the next byte would start a new frame."""
        return self.remaining == 0 and not self.header

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        position, size = 0, len(view)
        while position < size:
            if self.remaining:
                step = min(self.remaining, size - position)
                self.remaining -= step
                position += step
                continue
            needed = _header_size(self.header) - len(self.header)
            take = view[position : position + needed]
            self.header += take
            position += len(take)
            if len(self.header) == _header_size(self.header):
                self._start_frame()

    def _start_frame(self) -> None:
        header = self.header
        if header[0] & 0x0F == OPCODE_CLOSE:
            self.saw_close = True
        length = header[1] & 0x7F
        if length == 126:
            length = struct.unpack_from("!H", header, 2)[0]
        elif length == 127:
            length = struct.unpack_from("!Q", header, 2)[0]
        self.remaining = length
        self.header = bytearray()


def _header_size(partial: bytearray) -> int:
    """Bytes in a frame header, as far as the bytes seen so far tell (2 until the length byte is known)."""
    if len(partial) < 2:
        return 2
    length = partial[1] & 0x7F
    extended = 2 if length == 126 else 8 if length == 127 else 0
    mask = 4 if partial[1] & 0x80 else 0
    return 2 + extended + mask


def close_frame(code: int = GOING_AWAY, reason: str = "going away", masked: bool = False) -> bytes:
    """A Close frame; frames a client sends (towards the app) must be masked (RFC 6455 §5.3)."""
    payload = struct.pack("!H", code) + reason.encode()[:123]
    if not masked:
        return bytes([0x80 | OPCODE_CLOSE, len(payload)]) + payload
    key = os.urandom(4)
    body = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return bytes([0x80 | OPCODE_CLOSE, 0x80 | len(payload)]) + key + body
