"""The agent's wire format: JSON lines, typed error replies and checked request arguments.

One UTF-8 JSON object per line in both directions (see docs/protocol.md). Nothing here
touches a socket or a file descriptor: `LineReader` cuts bytes into frames, `parse_request`
turns a frame into a `Request`, and `OpError` is every refusal the agent can reply with.
"""

from __future__ import annotations

import base64
import binascii
import errno as _errno
import json
from typing import Any

AGENT_NAME = "netharness-hostagent"
PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20  # a request line longer than this is discarded up to its newline


class OpError(Exception):
    """A request failed; becomes `{"ok": false, "error": {...}}`.

    kind: "os" (the kernel said no; `errno` is its name), "bad-request", "unknown-op",
    "no-such-socket", "timeout", "eof", "bad-reply", "closed", "too-large", "truncated",
    "internal".
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str = "bad-request",
        errno: str | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.errno = errno
        self.code = code

    @classmethod
    def from_os(cls, exc: OSError, what: str) -> OpError:
        code = exc.errno
        name = _errno.errorcode.get(code) if code is not None else None
        reason = exc.strerror or str(exc)
        return cls(f"{what}: {reason}", kind="os", errno=name, code=code)

    @classmethod
    def timeout(cls, message: str) -> OpError:
        return cls(message, kind="timeout", errno="ETIMEDOUT", code=_errno.ETIMEDOUT)

    def to_json(self) -> dict[str, Any]:
        return {"errno": self.errno, "code": self.code, "message": self.message, "kind": self.kind}


class Deferred:
    """What an op returns when it answers later, through `HostAgent.reply`/`fail`."""


DEFERRED = Deferred()


def encode(frame: dict[str, Any]) -> bytes:
    """One frame as one line (ASCII-only JSON, so always valid UTF-8)."""
    return json.dumps(frame, separators=(",", ":")).encode("ascii") + b"\n"


def ok_reply(rid: object, result: dict[str, Any]) -> dict[str, Any]:
    return {"id": rid, "ok": True, "result": result}


def error_reply(rid: object, error: OpError) -> dict[str, Any]:
    return {"id": rid, "ok": False, "error": error.to_json()}


class LineReader:
    """Cuts a byte stream into lines; lines over `limit` bytes become `TOO_LARGE` markers."""

    TOO_LARGE = None

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | None]:
        """Return the complete lines (without newline) in order; None for an oversized one."""
        self._buf += data
        frames: list[bytes | None] = []
        while True:
            end = self._buf.find(b"\n", self._scanned)
            if end < 0:
                if len(self._buf) > self.limit:
                    if not self._discarding:
                        frames.append(self.TOO_LARGE)
                        self._discarding = True
                    self._buf.clear()
                self._scanned = len(self._buf)
                return frames
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            self._scanned = 0
            if self._discarding:
                self._discarding = False
            elif len(line) > self.limit:
                frames.append(self.TOO_LARGE)
            else:
                frames.append(line)

    def leftover(self) -> bytes:
        """At EOF: the unterminated tail, if any (empty when nothing was cut off)."""
        tail = b"" if self._discarding else bytes(self._buf)
        self._buf.clear()
        return tail


class Request:
    """One parsed request; its accessors check argument types and raise bad-request."""

    __slots__ = ("args", "id", "op")

    def __init__(self, rid: int | str, op: str, args: dict[str, Any]) -> None:
        self.id = rid
        self.op = op
        self.args = args

    def _get(self, name: str) -> Any:
        return self.args.get(name)

    def _bad(self, name: str, wanted: str) -> OpError:
        return OpError(f"{self.op}: argument {name!r} must be {wanted}, not {self._get(name)!r}")

    def text(self, name: str, default: str | None = None) -> str:
        value = self._get(name)
        if value is None:
            if default is None:
                raise OpError(f"{self.op}: argument {name!r} is required")
            return default
        if not isinstance(value, str):
            raise self._bad(name, "a string")
        return value

    def opt_text(self, name: str) -> str | None:
        value = self._get(name)
        if value is not None and not isinstance(value, str):
            raise self._bad(name, "a string or null")
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str | None = None) -> str:
        value = self.text(name, default)
        if value not in options:
            raise self._bad(name, " or ".join(repr(o) for o in options))
        return value

    def integer(self, name: str, default: int | None, low: int, high: int) -> int:
        value = self._get(name)
        if value is None:
            if default is None:
                raise OpError(f"{self.op}: argument {name!r} is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._bad(name, f"an integer from {low} to {high}")
        return value

    def port(self, name: str, default: int | None = None) -> int:
        return self.integer(name, default, 0, 65535)

    def number(self, name: str, default: float, low: float = 0.0, high: float = 86400.0) -> float:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(name, f"a number from {low} to {high}")
        if not low <= value <= high:  # also refuses NaN
            raise self._bad(name, f"a number from {low} to {high}")
        return float(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.opt_flag(name)
        return default if value is None else value

    def opt_flag(self, name: str) -> bool | None:
        value = self._get(name)
        if value is not None and not isinstance(value, bool):
            raise self._bad(name, "true, false or null")
        return value

    def endpoint(self, name: str) -> tuple[str, int] | None:
        value = self._get(name)
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], str)
            or isinstance(value[1], bool)
            or not isinstance(value[1], int)
            or not 0 <= value[1] <= 65535
        ):
            raise self._bad(name, "an [address, port] pair")
        return value[0], value[1]

    def payload(self, required: bool = True) -> bytes:
        """`data` (a string, sent as UTF-8) or `data_b64` (base64 of raw bytes)."""
        text, b64 = self._get("data"), self._get("data_b64")
        if text is not None and b64 is not None:
            raise OpError(f"{self.op}: give either 'data' or 'data_b64', not both")
        if b64 is not None:
            if not isinstance(b64, str):
                raise self._bad("data_b64", "a base64 string")
            try:
                return base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise self._bad("data_b64", "valid base64") from None
        if text is None:
            if required:
                raise OpError(f"{self.op}: argument 'data' (or 'data_b64') is required")
            return b""
        if not isinstance(text, str):
            raise self._bad("data", "a string")
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            raise self._bad("data", "a string encodable as UTF-8") from None


def parse_request(line: bytes) -> Request:
    """Decode one frame; raises `FrameError` (with whatever id could be read) if it is bad."""
    try:
        frame = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise FrameError(None, OpError("request is not valid UTF-8")) from None
    except (ValueError, RecursionError) as exc:
        raise FrameError(None, OpError(f"request is not valid JSON: {exc}")) from None
    if not isinstance(frame, dict):
        raise FrameError(None, OpError("a request must be a JSON object"))
    rid = frame.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (int, str)):
        raise FrameError(None, OpError("a request needs an 'id' that is an integer or a string"))
    op = frame.get("op")
    if not isinstance(op, str):
        raise FrameError(rid, OpError("a request needs an 'op' that is a string"))
    args = {k: v for k, v in frame.items() if k not in ("id", "op")}
    return Request(rid, op, args)


class FrameError(Exception):
    """A frame that cannot become a request; `rid` is its id if one was readable."""

    def __init__(self, rid: int | str | None, error: OpError) -> None:
        super().__init__(error.message)
        self.rid = rid
        self.error = error


def encode_data(data: bytes) -> dict[str, str]:
    """Received bytes for a reply: `data` when they are UTF-8 text, else `data_b64`."""
    try:
        return {"data": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"data_b64": base64.b64encode(data).decode("ascii")}
