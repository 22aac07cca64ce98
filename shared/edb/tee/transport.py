"""Frames over a Unix stream socket: scatter/gather send, bounded receive, descriptor passing.

The only I/O of the protocol lives here (the codec in :mod:`edb.tee.protocol` is pure). Used by the
client library and by the service.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edb.errors import TeeError
from edb.tee.errors import BUSY, CONNECTION_LOST, FRAME_TIMEOUT, PROTOCOL
from edb.tee.protocol import FRAME_LENGTH, Limits, check_frame_length

_UNIX_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin
_MSG_CTRUNC = int(socket.MSG_CTRUNC)  # a plain int: `flags & <IntFlag>` runs Python-level enum code per frame


class PeerClosed(Exception):
    """The peer closed the connection at a frame boundary (a normal end of a connection)."""


@dataclass(frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """SO_PEERCRED: the credentials the kernel recorded when the peer connected (cannot be forged)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCredentials(pid, uid, gid)


@contextlib.contextmanager
def socket_address(path: Path | str) -> Iterator[str]:
    """An address for ``bind``/``connect`` that fits ``sun_path`` even for long paths.

    Long paths are reached through ``/proc/self/fd/<directory fd>/<name>`` (the kernel resolves the
    directory descriptor), so deep test and state directories work without changing directory.
    """
    path = Path(path)
    if len(os.fsencode(path)) <= _UNIX_PATH_MAX:
        yield str(path)
        return
    dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dirfd}/{path.name}"
    finally:
        os.close(dirfd)


#: Send buffer asked for on both ends. A frame larger than the sender's buffer is handed over in
#: pieces, each a wake-up of the reader and a context switch (measured: 80 switches and ~2.5 ms for
#: 4 MiB in and out with Linux's default 208 KiB); the kernel caps the request at
#: net.core.wmem_max, so on systems with a small cap large tensors still take several pieces.
SEND_BUFFER_BYTES = 8 * 1024 * 1024


def widen_send_buffer(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


def send_frame(sock: socket.socket, parts: Sequence[bytes | memoryview], fds: Sequence[int] = ()) -> None:
    """Send a whole frame; descriptors ride with its first byte.

    One ``sendmsg`` of every part (no user-space copy); only a partial send (a frame larger than
    the socket buffer) falls back to slicing the remaining parts."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    total = 0
    for p in parts:
        total += len(p)  # every part is a byte buffer (bytes or a memoryview cast to "B")
    sent = sock.sendmsg(parts, ancillary)
    if sent != total:
        send_rest(sock, parts, sent)


def send_rest(sock: socket.socket, parts: Sequence[bytes | memoryview], sent: int) -> None:
    """The rest of a frame of which ``sendmsg`` took only the first ``sent`` bytes."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while True:
        while sent and views:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0
        if not views:
            return
        sent = sock.sendmsg(views)


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    while len(view):
        n = sock.recv_into(view)
        if n == 0:
            raise TeeError("connection closed in the middle of a frame", code=CONNECTION_LOST)
        view = view[n:]


class PartialFrames(Protocol):
    """The service's bounds on frames that have started to arrive (:mod:`edb_tee.server`): the
    rest of a frame must arrive within ``deadline_s`` of its first byte, and a frame's declared
    length is held against a memory budget while it arrives."""

    deadline_s: float

    def hold(self, nbytes: int) -> bool: ...
    def release(self, nbytes: int) -> None: ...


def _recv_by(sock: socket.socket, view: memoryview, deadline: float) -> None:
    """:func:`_recv_exact` finished by ``deadline`` (monotonic), however slowly the bytes trickle:
    each read waits at most for what is left of the deadline. The socket is blocking again after."""
    try:
        while len(view):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TeeError("a frame did not arrive whole within its deadline", code=FRAME_TIMEOUT)
            sock.settimeout(left)
            try:
                n = sock.recv_into(view)
            except TimeoutError:
                raise TeeError("a frame did not arrive whole within its deadline", code=FRAME_TIMEOUT) from None
            if n == 0:
                raise TeeError("connection closed in the middle of a frame", code=CONNECTION_LOST)
            view = view[n:]
    finally:
        sock.settimeout(None)


def recv_frame(sock: socket.socket, limits: Limits, *, max_fds: int = 0) -> tuple[bytearray, list[int]]:
    """One frame body and the descriptors that came with it.

    The declared length is checked against ``limits.max_frame`` before the body is allocated. Raises
    :class:`PeerClosed` on a clean end of stream. Descriptors received with a refused frame are
    closed here, so a hostile peer cannot leak descriptors into the service.
    """
    header = bytearray(FRAME_LENGTH.size)
    fds: list[int] = []
    try:
        if max_fds:
            n, ancdata, flags, _ = sock.recvmsg_into([header], socket.CMSG_SPACE(max_fds * 4))
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(data) - len(data) % 4
                    fds.extend(array.array("i", data[:usable]))
            if flags & _MSG_CTRUNC:
                raise TeeError("too many file descriptors with one frame", code=PROTOCOL)
        else:
            n = sock.recv_into(header)
        if n == 0:
            raise PeerClosed()
        _recv_exact(sock, memoryview(header)[n:])
        (length,) = FRAME_LENGTH.unpack(header)
        check_frame_length(length, limits)
        body = bytearray(length)
        _recv_exact(sock, memoryview(body))
        return body, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


#: Offset of a frame's length prefix in a receive buffer of :func:`read_frame`:
#: the body then starts 16 bytes in, so tensor data (64-byte aligned within the body) keeps the
#: alignment of the allocation itself.
_PREFIX_AT = 16 - FRAME_LENGTH.size
_BODY_AT = 16
#: Frames up to this size are read with their length prefix in one system call; larger ones take two.
MAX_READ_HINT = 64 * 1024


_CMSG_SPACE: dict[int, int] = {}


def read_frame(sock: socket.socket, limits: Limits, hint: int, max_fds: int,
               partial: PartialFrames | None = None) -> tuple[memoryview, list[int]]:
    """Read one frame whose sender waits for our answer before sending another.

    The first read asks for the length prefix and up to ``hint`` body bytes at once (callers pass
    the size of the previous frame), saving a system call per round trip. Because the peer sends
    nothing more until answered, bytes beyond the frame are a protocol error, and descriptors that
    arrive belong to this frame. The length is checked against ``limits.max_frame`` before the body
    is allocated; descriptors received with a refused frame are closed here.

    With ``partial`` (the service), a frame that does not arrive in the first read must arrive
    whole within ``partial.deadline_s`` of it (``TEE_FRAME_TIMEOUT``), and its declared length is
    held against ``partial`` until it has (``TEE_BUSY`` when the budget is spent). The first read
    itself waits as long as it takes: an idle connection between requests is normal."""
    if hint > MAX_READ_HINT:
        hint = MAX_READ_HINT
    # not zero-filled (numpy, not bytearray): only bytes received into it are ever exposed
    buf = np.empty(_BODY_AT + hint, np.uint8)
    view = buf.data
    fds: list[int] = []
    try:
        if max_fds:
            space = _CMSG_SPACE.get(max_fds)
            if space is None:
                space = _CMSG_SPACE[max_fds] = socket.CMSG_SPACE(max_fds * 4)
            got, ancdata, flags, _ = sock.recvmsg_into([view[_PREFIX_AT:]], space)
            if ancdata:
                for level, kind, data in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        usable = len(data) - len(data) % 4
                        fds.extend(array.array("i", data[:usable]))
            if flags & _MSG_CTRUNC:
                raise TeeError("too many file descriptors with one frame", code=PROTOCOL)
        else:
            got = sock.recv_into(view[_PREFIX_AT:])
        deadline = 0.0
        if got < FRAME_LENGTH.size:
            if got == 0:
                raise PeerClosed()
            if partial is None:
                _recv_exact(sock, view[_PREFIX_AT + got:_BODY_AT])
            else:
                deadline = time.monotonic() + partial.deadline_s
                _recv_by(sock, view[_PREFIX_AT + got:_BODY_AT], deadline)
            got = FRAME_LENGTH.size
        (length,) = FRAME_LENGTH.unpack_from(view, _PREFIX_AT)
        check_frame_length(length, limits)
        missing = FRAME_LENGTH.size + length - got
        if missing:
            if missing < 0:
                raise TeeError("bytes beyond the frame: one request at a time per connection", code=PROTOCOL)
            if partial is None:
                view = _grow(buf, view, length, hint, got)
                _recv_exact(sock, view[_PREFIX_AT + got:_BODY_AT + length])
            else:  # the service: held against the budget and a deadline until the last byte is in
                if not partial.hold(length):
                    raise TeeError("the TEE holds as many unfinished frames as it allows; retry", code=BUSY)
                try:
                    deadline = deadline or time.monotonic() + partial.deadline_s
                    view = _grow(buf, view, length, hint, got)
                    _recv_by(sock, view[_PREFIX_AT + got:_BODY_AT + length], deadline)
                finally:
                    partial.release(length)
        return view[_BODY_AT:_BODY_AT + length], fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _grow(buf: np.ndarray, view: memoryview, length: int, hint: int, got: int) -> memoryview:
    """A buffer for the whole frame, keeping what arrived (the first read's buffer if it fits)."""
    if length <= hint:
        return view
    bigger = np.empty(_BODY_AT + length, np.uint8)
    bigger[:_PREFIX_AT + got] = buf[:_PREFIX_AT + got]
    return bigger.data


def recv_reply(sock: socket.socket, limits: Limits, hint: int) -> memoryview:
    """A client's read of the reply to its one request in flight (no descriptors). The service
    sends nothing unasked. Raises :class:`PeerClosed` on a clean end of stream."""
    return read_frame(sock, limits, hint, 0)[0]


def recv_request(sock: socket.socket, limits: Limits, hint: int, *, max_fds: int = 0,
                 partial: PartialFrames | None = None) -> tuple[memoryview, list[int]]:
    """The service's read of a client's next request and the descriptors that came with it. A
    client sends one request at a time: bytes of a further frame that arrive with this one's read
    make it a protocol error (descriptors are never attributed to the wrong frame: a read that
    reaches into the next frame is refused, its descriptors closed)."""
    return read_frame(sock, limits, hint, max_fds, partial)
