"""The agent's readiness loop: epoll (poll for a regular-file stdin), fd → handler.

`selectors` keeps a SelectorKey record per file descriptor and converts events both ways
in Python; with a connection per registration, thousands a second, that bookkeeping was a
fifth of accepting one. This keeps one dict and hands the handler its mask.

Masks are the `selectors` ones: READ (1) and WRITE (2). An error or hang-up is reported as
whichever of them the descriptor is registered for, as `selectors` does, so the handler's
own read or write finds out what happened.
"""

from __future__ import annotations

import math
import select
from collections.abc import Callable

READ = 1
WRITE = 2
Handler = Callable[[int], None]


class Poller:
    """fd → (handler, events) with epoll, or poll once `use_poll` has been called."""

    def __init__(self) -> None:
        self._handlers: dict[int, tuple[Handler, int]] = {}
        self._epoll: select.epoll | None = select.epoll()
        self._poll: select.poll | None = None
        self._in, self._out = select.EPOLLIN, select.EPOLLOUT

    def use_poll(self) -> None:
        """Switch to poll(2) (epoll refuses a regular file); only while nothing is registered."""
        assert not self._handlers
        self.close()
        self._poll = select.poll()
        self._in, self._out = select.POLLIN, select.POLLOUT

    @property
    def kind(self) -> str:
        """ "epoll", or "poll" after `use_poll`."""
        return "epoll" if self._epoll is not None else "poll"

    def register(self, fd: int, events: int, handler: Handler) -> None:
        self._control("register", fd, events, handler)

    def modify(self, fd: int, events: int, handler: Handler) -> None:
        self._control("modify", fd, events, handler)

    def _control(self, verb: str, fd: int, events: int, handler: Handler) -> None:
        native = self._native(events)
        getattr(self._epoll if self._epoll is not None else self._poll, verb)(fd, native)
        self._handlers[fd] = (handler, events)

    def unregister(self, fd: int) -> None:
        del self._handlers[fd]
        if self._epoll is not None:
            self._epoll.unregister(fd)
        elif self._poll is not None:
            self._poll.unregister(fd)

    def select(self, timeout: float | None) -> list[tuple[Handler, int]]:
        """The handlers of the ready descriptors, with READ/WRITE masks."""
        if self._epoll is not None:
            wait = -1.0 if timeout is None else max(math.ceil(timeout * 1e3) * 1e-3, 0.0)
            ready = self._epoll.poll(wait, max(len(self._handlers), 1))
        else:
            assert self._poll is not None
            wait_ms = None if timeout is None else max(math.ceil(timeout * 1e3), 0)
            ready = self._poll.poll(wait_ms)
        handlers = self._handlers
        found = []
        for fd, native in ready:
            entry = handlers.get(fd)
            if entry is None:
                continue
            mask = 0
            if native & ~self._in:
                mask |= WRITE
            if native & ~self._out:
                mask |= READ
            found.append((entry[0], mask & entry[1]))
        return found

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        self._poll = None

    def _native(self, events: int) -> int:
        return (self._in if events & READ else 0) | (self._out if events & WRITE else 0)
