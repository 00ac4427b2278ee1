"""Frame boundaries, followed from headers alone, whatever pieces the bytes arrive in."""

from __future__ import annotations

import struct

import pytest

from paastis.websocket import FrameTracker, close_frame


def frame(payload: bytes, opcode: int = 0x2, masked: bool = False, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        head = bytes([first, (0x80 if masked else 0) | size])
    elif size < 65536:
        head = bytes([first, (0x80 if masked else 0) | 126]) + struct.pack("!H", size)
    else:
        head = bytes([first, (0x80 if masked else 0) | 127]) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("piece", [1, 3, 7, 1000, 1 << 20])
def test_boundaries_are_found_in_any_split(masked, piece):
    frames = [frame(b"x" * size, masked=masked) for size in (0, 5, 125, 126, 65535, 65536, 70_000)]
    tracker = FrameTracker()
    stream = b"".join(frames)
    boundaries = set()
    offset = 0
    for f in frames:
        offset += len(f)
        boundaries.add(offset)
    seen = 0
    for start in range(0, len(stream), piece):
        chunk = stream[start : start + piece]
        tracker.feed(chunk)
        seen += len(chunk)
        assert tracker.at_boundary == (seen in boundaries)


def test_a_close_frame_is_noticed_and_fragments_are_frames():
    tracker = FrameTracker()
    tracker.feed(frame(b"part", opcode=0x1, fin=False))
    assert tracker.at_boundary and not tracker.saw_close
    tracker.feed(frame(b"end", opcode=0x0)[:2])
    assert not tracker.at_boundary
    tracker.feed(frame(b"end", opcode=0x0)[2:] + frame(struct.pack("!H", 1000), opcode=0x8))
    assert tracker.at_boundary and tracker.saw_close


def test_close_frames_say_1001_going_away_masked_towards_the_app():
    assert close_frame() == b"\x88\x0c\x03\xe9going away"
    masked = close_frame(masked=True)
    assert masked[0] == 0x88 and masked[1] == 0x80 | 12
    key, body = masked[2:6], masked[6:]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(body)) == b"\x03\xe9going away"
