"""Frames: the stdio of many processes and their control messages over one byte stream.

The ssh backend carries everything between the controller's relay and the helper on a
machine (hostagent.remote) over one SSH session, whose stdin and stdout are one byte
stream each way. A frame is

    kind (1 byte) · stream (4 bytes, big-endian) · length (4 bytes) · payload

CONTROL frames (stream 0) hold one JSON object. STDIN, STDOUT and STDERR frames hold bytes
of that stream's process; an empty payload is the end of that direction (EOF).
"""

from __future__ import annotations

import json
import struct
from typing import Any

HEADER = struct.Struct(">BII")
CONTROL, STDIN, STDOUT, STDERR = range(4)
KINDS = frozenset((CONTROL, STDIN, STDOUT, STDERR))
MAX_PAYLOAD = 1 << 20  # larger means the stream is corrupt: nobody sends that much at once
CHUNK = 65536  # what a sender reads from a pipe at a time


class FrameError(ValueError):
    """The byte stream is not frames (corrupt, or not the helper speaking)."""


def pack(kind: int, stream: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, stream, len(payload)) + payload


def control(message: dict[str, Any]) -> bytes:
    return pack(CONTROL, 0, json.dumps(message, separators=(",", ":")).encode())


class Decoder:
    """Cuts a byte stream into frames, whatever the size of the pieces it arrives in."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """The frames `data` completes: (kind, stream, payload) each."""
        self._buffer += data
        found = []
        while len(self._buffer) >= HEADER.size:
            kind, stream, size = HEADER.unpack_from(self._buffer)
            if kind not in KINDS or size > MAX_PAYLOAD:
                raise FrameError(f"not a frame: kind {kind}, {size} bytes")
            end = HEADER.size + size
            if len(self._buffer) < end:
                break
            found.append((kind, stream, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return found


def message(payload: bytes) -> dict[str, Any]:
    """A CONTROL frame's JSON object."""
    decoded = json.loads(payload)
    if not isinstance(decoded, dict):
        raise FrameError("a control frame holds a JSON object")
    return decoded
