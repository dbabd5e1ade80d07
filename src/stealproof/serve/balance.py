"""Even out keep-alive connections across the worker processes of ``serve --workers N``.

uvicorn's workers share one listening socket, and the worker whose event loop wakes first
accepts a new connection: 16 clients that connect one after another were seen to land 15/1,
13/3 or 11/5 on two workers, and then the busier worker's clients queue while the other worker
idles. With a :class:`BalancedSocket` every worker publishes how many connections it holds in a
small table shared by the workers (:class:`ConnectionBoard`); a worker that holds more than
another one leaves a waiting connection alone for up to :data:`DEFER` seconds so that the less
busy worker takes it — nginx's ``accept_disabled`` does the same — and takes it itself when
nobody did. Connections already open are never moved, and nothing changes with one worker.
(uvloop, which uvicorn picks when it is installed, accepts through libuv and bypasses this.)
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing
import os
import select
import socket
import time
from collections.abc import Callable
from multiprocessing.reduction import DupFd, ForkingPickler
from pathlib import Path
from typing import Any

#: Seconds a worker that holds more connections than another leaves a new one to the others
#: (the less busy worker takes it within a millisecond on an idle machine; on a loaded one it
#: may wait for a time slice of the CPU first).
DEFER = 0.02

#: Seconds a deferring worker sleeps between looks (its event loop polls the socket meanwhile).
_NAP = 0.0005

#: Workers one table has room for (a slot per live worker process).
SLOTS = 64


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a killed worker not yet reaped by its parent does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (not Linux), or it just ended
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class ConnectionBoard:
    """Connections held per worker process, in shared memory: one ``(pid, count)`` slot each.

    Created by the parent before the workers start and handed to them with the listening
    socket; a worker claims a slot at its first accept (a free one, or one whose process is gone).
    """

    def __init__(self, slots: int = SLOTS) -> None:
        if slots < 1:
            raise ValueError(f"slots: expected ≥ 1, got {slots}")
        ctx = multiprocessing.get_context("spawn")
        self.slots = slots
        self._lock = ctx.Lock()
        self._cells = ctx.RawArray("q", 2 * slots)  # pid, count, pid, count, ...
        self._accepts = ctx.RawValue("q", 0)  # connections accepted by any worker, ever

    def claim(self, pid: int) -> int:
        """The slot of process ``pid``; one is taken now (count 0) when it has none."""
        with self._lock:
            free = None
            for i in range(self.slots):
                owner = self._cells[2 * i]
                if owner == pid:
                    return i
                if free is None and (owner == 0 or not _alive(owner)):
                    free = i
            if free is None:
                raise RuntimeError(f"all {self.slots} connection slots are taken")
            self._cells[2 * free] = pid
            self._cells[2 * free + 1] = 0
            return free

    def release(self, slot: int) -> None:
        """Give a slot back (its process stops accepting)."""
        with self._lock:
            self._cells[2 * slot] = 0
            self._cells[2 * slot + 1] = 0

    @property
    def accepts(self) -> int:
        """How many connections the workers have accepted so far (changes at every accept)."""
        return int(self._accepts.value)

    def accepted(self) -> None:
        """Count an accepted connection (two workers counting at once may count one: the
        value still changes, which is all a waiting worker looks at)."""
        self._accepts.value += 1

    def publish(self, slot: int, count: int) -> None:
        """Set the number of connections the slot's worker holds (one aligned store)."""
        self._cells[2 * slot + 1] = count

    def counts(self) -> dict[int, int]:
        """``{slot: connections}`` of the slots in use."""
        cells = self._cells
        return {i: cells[2 * i + 1] for i in range(self.slots) if cells[2 * i]}

    def lowest_other(self, slot: int) -> int | None:
        """The fewest connections any other live worker holds (None: no other worker); a
        slot whose process is gone is freed on the way."""
        lowest: int | None = None
        for i, n in self.counts().items():
            if i == slot or (lowest is not None and n >= lowest):
                continue
            if not _alive(self._cells[2 * i]):
                self.release(i)
                continue
            lowest = n
        return lowest


class _CountedSocket(socket.socket):
    """An accepted connection that tells its listening socket when it is closed."""

    _on_close: Callable[[], None] | None = None

    def close(self) -> None:
        done, self._on_close = self._on_close, None
        super().close()
        if done is not None:
            done()


class BalancedSocket(socket.socket):
    """A listening socket whose :meth:`accept` defers to less busy workers (module doc)."""

    board: ConnectionBoard
    defer: float = DEFER
    _slot: int | None = None
    _held = 0
    #: the board's accept count when this worker began to leave a connection to others, and when
    _waiting: tuple[int, float] | None = None
    _poll: Any = None

    @classmethod
    def wrap(cls, sock: socket.socket, board: ConnectionBoard) -> BalancedSocket:
        """A balanced socket on a duplicate of ``sock``'s descriptor (``sock`` stays open)."""
        out = cls(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        out.board = board
        out.set_inheritable(sock.get_inheritable())
        return out

    def accept(self) -> tuple[socket.socket, Any]:
        """Accept a connection unless another worker holds fewer (then raise
        ``BlockingIOError``, as for an empty queue, for at most :attr:`defer` seconds)."""
        if self._slot is None:
            self._slot = self.board.claim(os.getpid())
        if self._should_wait():
            time.sleep(_NAP)  # let the other worker's loop run; ours asks again soon
            raise BlockingIOError("left to a worker with fewer connections")
        fd, addr = self._accept()  # type: ignore[attr-defined]
        conn = _CountedSocket(self.family, self.type, self.proto, fileno=fd)
        if socket.getdefaulttimeout() is None and self.gettimeout():
            conn.setblocking(True)
        conn._on_close = self._closed_one
        self._waiting = None
        self._held += 1
        self.board.publish(self._slot, self._held)
        self.board.accepted()
        return conn, addr

    def _should_wait(self) -> bool:
        assert self._slot is not None
        lowest = self.board.lowest_other(self._slot)
        if lowest is None or self._held <= lowest or not self._pending():
            # an empty queue (asyncio asks again after every accept) starts no wait
            self._waiting = None
            return False
        now = time.monotonic()
        accepts = self.board.accepts
        # a new wait when a worker accepted a connection since the last one began
        if self._waiting is None or self._waiting[0] != accepts:
            self._waiting = (accepts, now)
        return now - self._waiting[1] < self.defer

    def _pending(self) -> bool:
        """Whether a connection waits in the accept queue (a zero-timeout poll)."""
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.fileno(), select.POLLIN)
        return bool(self._poll.poll(0))

    def _closed_one(self) -> None:
        self._held = max(0, self._held - 1)
        if self._slot is not None:
            self.board.publish(self._slot, self._held)


def _reduce(sock: BalancedSocket) -> tuple[Any, ...]:
    return _rebuild, (DupFd(sock.fileno()), sock.family, sock.type, sock.proto, sock.board)


def _rebuild(df: Any, family: int, type_: int, proto: int, board: ConnectionBoard) -> Any:
    out = BalancedSocket(family, type_, proto, fileno=df.detach())
    out.board = board
    return out


# worker processes are spawned: the socket travels to them pickled, with its board
ForkingPickler.register(BalancedSocket, _reduce)


def run_workers(config: Any, sock: socket.socket, board: ConnectionBoard | None = None) -> None:
    """Run ``config.workers`` uvicorn worker processes on ``sock``, balanced (module doc), under
    uvicorn's own supervisor (it restarts a worker that dies)."""
    from uvicorn import Server
    from uvicorn.supervisors import Multiprocess

    balanced = BalancedSocket.wrap(sock, board or ConnectionBoard())
    try:
        supervisor: Any = Multiprocess  # older releases also take the workers' entry point
        with contextlib.suppress(KeyboardInterrupt):  # the supervisor stops its workers itself
            if "target" in inspect.signature(supervisor).parameters:
                supervisor(config, target=Server(config).run, sockets=[balanced]).run()
            else:
                supervisor(config, sockets=[balanced]).run()
    finally:
        balanced.close()
