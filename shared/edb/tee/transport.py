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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from edb.errors import TeeError
from edb.tee.errors import CONNECTION_LOST, PROTOCOL
from edb.tee.protocol import FRAME_LENGTH, Limits, check_frame_length

_UNIX_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin


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


def send_frame(sock: socket.socket, parts: Sequence[bytes | memoryview], fds: Sequence[int] = ()) -> None:
    """Send a whole frame; descriptors ride with its first byte."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    while views:
        sent = sock.sendmsg(views, ancillary)
        ancillary = []
        while sent and views:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    while len(view):
        n = sock.recv_into(view)
        if n == 0:
            raise TeeError("connection closed in the middle of a frame", code=CONNECTION_LOST)
        view = view[n:]


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
            if flags & socket.MSG_CTRUNC:
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
