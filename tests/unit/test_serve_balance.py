"""The connection table and the balanced listening socket of ``serve --workers N``, in one
process: a socket that holds more connections than another worker leaves a new connection
waiting (``BlockingIOError``) for at most its ``defer`` seconds, then takes it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from stealproof.serve.balance import BalancedSocket, ConnectionBoard


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_board_slots_counts_and_dead_workers() -> None:
    board = ConnectionBoard(slots=3)
    me, parent = os.getpid(), os.getppid()
    a = board.claim(me)
    board.publish(a, 4)
    assert board.claim(me) == a  # a process keeps its slot and its count
    assert board.counts() == {a: 4}
    b = board.claim(parent)
    assert b != a
    assert board.lowest_other(a) == 0
    board.publish(b, 5)
    board.publish(a, 2)
    assert board.counts() == {a: 2, b: 5}
    assert board.lowest_other(a) == 5
    assert board.lowest_other(b) == 2
    gone = board.claim(dead_pid())
    board.publish(gone, 0)
    assert board.lowest_other(a) == 5  # the dead worker's 0 does not count, and its slot is freed
    assert gone not in board.counts()
    board.release(b)
    assert board.lowest_other(a) is None
    with pytest.raises(ValueError, match="slots"):
        ConnectionBoard(slots=0)


def test_a_killed_worker_not_yet_reaped_is_not_alive() -> None:
    board = ConnectionBoard(slots=2)
    mine = board.claim(os.getpid())
    board.publish(mine, 3)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 20
    while (
        time.monotonic() < deadline
        and os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    ):
        time.sleep(0.01)  # exited, left a zombie (not reaped: WNOWAIT)
    zombie = board.claim(child.pid)
    assert board.lowest_other(mine) is None  # its 0 does not count
    assert zombie not in board.counts()
    child.wait()


def test_board_full() -> None:
    board = ConnectionBoard(slots=1)
    board.claim(os.getpid())
    with pytest.raises(RuntimeError, match="all 1 connection slots are taken"):
        board.claim(os.getppid())


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def connect(sock: socket.socket) -> socket.socket:
    c = socket.create_connection(sock.getsockname(), timeout=5)
    time.sleep(0.02)  # in the accept queue
    return c


def test_defers_to_a_worker_with_fewer_connections(listener: socket.socket) -> None:
    board = ConnectionBoard(slots=4)
    other = board.claim(os.getppid())  # a live "worker" that holds nothing
    bal = BalancedSocket.wrap(listener, board)
    bal.defer = 0.2
    clients = [connect(listener)]
    first, _ = bal.accept()  # 0 held, the other 0: taken at once
    mine = board.claim(os.getpid())  # the slot the socket claimed
    assert board.counts() == {other: 0, mine: 1}
    clients.append(connect(listener))
    t0 = time.monotonic()
    with pytest.raises(BlockingIOError):
        bal.accept()  # 1 held > 0: left to the other worker
    with pytest.raises(BlockingIOError):
        bal.accept()  # still within the same wait
    while time.monotonic() - t0 < bal.defer:
        time.sleep(0.01)
    second, _ = bal.accept()  # nobody took it: taken after all
    assert max(board.counts().values()) == 2
    board.publish(other, 3)  # the other worker now holds more: no waiting
    clients.append(connect(listener))
    third, _ = bal.accept()
    first.close()
    first.close()  # a second close does not count twice
    assert sorted(board.counts().values()) == [2, 3]
    for s in (second, third, *clients):
        s.close()
    assert sorted(board.counts().values()) == [0, 3]
    bal.close()


def test_a_wait_starts_with_a_queued_connection(listener: socket.socket) -> None:
    """asyncio asks again after every accept: an empty queue starts no wait, so a connection
    that comes later is still left to the other worker for the full ``defer``."""
    board = ConnectionBoard(slots=4)
    board.claim(os.getppid())  # a live "worker" that holds nothing
    bal = BalancedSocket.wrap(listener, board)
    bal.defer = 0.15
    c1 = connect(listener)
    a, _ = bal.accept()
    with pytest.raises(BlockingIOError):
        bal.accept()  # nothing queued
    assert bal._waiting is None
    time.sleep(bal.defer + 0.05)
    c2 = connect(listener)
    with pytest.raises(BlockingIOError):
        bal.accept()  # 1 held > 0: the wait starts now, not at the empty look above
    assert bal._waiting is not None
    time.sleep(bal.defer + 0.05)
    b, _ = bal.accept()
    for s in (a, b, c1, c2):
        s.close()
    bal.close()


def test_a_new_wait_starts_when_another_worker_accepted(listener: socket.socket) -> None:
    board = ConnectionBoard(slots=4)
    board.claim(os.getppid())
    bal = BalancedSocket.wrap(listener, board)
    bal.defer = 0.15
    c1 = connect(listener)
    a, _ = bal.accept()
    c2 = connect(listener)
    with pytest.raises(BlockingIOError):
        bal.accept()  # the wait starts
    time.sleep(bal.defer + 0.05)
    board.accepted()  # the other worker took a connection meanwhile
    with pytest.raises(BlockingIOError):
        bal.accept()  # so the one still queued starts a new wait
    time.sleep(bal.defer + 0.05)
    b, _ = bal.accept()
    for s in (a, b, c1, c2):
        s.close()
    bal.close()


def test_wrapped_socket_is_a_duplicate(listener: socket.socket) -> None:
    bal = BalancedSocket.wrap(listener, ConnectionBoard(slots=2))
    assert bal.fileno() != listener.fileno()
    assert bal.getsockname() == listener.getsockname()
    assert bal.proto == listener.proto
    bal.close()
    listener.getsockname()  # still open
