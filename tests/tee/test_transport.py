"""Frame I/O over real Unix stream sockets: one read per frame, growth, descriptors, pipelining
refused, partial sends of frames larger than the socket buffer."""

from __future__ import annotations

import os
import socket
import struct
import threading

import numpy as np
import pytest

from edb.errors import TeeError
from edb.tee.protocol import Limits, Message, MsgType, Op, Tensor, Value, decode, encode, frame_bytes
from edb.tee.transport import PeerClosed, recv_reply, recv_request, send_frame


@pytest.fixture
def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(60)  # bounds on a reply, never a timing assertion
    b.settimeout(60)
    yield a, b
    a.close()
    b.close()


def request(x: np.ndarray, rid: int = 1) -> Message:
    return Message(MsgType.REQUEST, Op.INVOKE, rid, 1, 2, 0, [Value(5), Tensor("input", x)])


def test_frames_of_any_size_against_any_hint(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    for rows, hint in ((1, 0), (1, 4096), (700, 16), (700, 64 * 1024)):
        x = np.arange(rows * 8, dtype=np.float32).reshape(rows, 8)
        send_frame(a, encode(request(x)))
        body = recv_reply(b, Limits(), hint)
        np.testing.assert_array_equal(decode(body).params[1].array, x)  # type: ignore[union-attr]
        arr = decode(body).params[1].array  # type: ignore[union-attr]
        assert arr.flags.writeable and arr.ctypes.data % 16 == 0


def test_a_second_request_before_the_answer_is_refused(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    frame = frame_bytes(request(np.ones((1, 4), np.float32)))
    a.sendall(frame + frame)  # pipelined: the reader cannot tell which descriptors belong to which
    with pytest.raises(TeeError) as err:
        recv_request(b, Limits(), len(frame) * 2, max_fds=4)
    assert err.value.code == "TEE_PROTOCOL"


def test_descriptors_ride_with_their_frame_and_are_closed_when_refused(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    r, w = os.pipe()
    try:
        frame = encode(request(np.ones((1, 4), np.float32)))
        send_frame(a, frame, [r])
        body, fds = recv_request(b, Limits(), 0, max_fds=4)
        assert decode(body).params[0] == Value(5)
        assert len(fds) == 1 and os.fstat(fds[0]).st_ino == os.fstat(r).st_ino
        os.close(fds[0])
        # an oversized frame with a descriptor: refused, and the received descriptor closed
        before = set(os.listdir("/proc/self/fd"))
        a.sendmsg([struct.pack("<I", 1 << 30)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", r))])
        with pytest.raises(TeeError) as err:
            recv_request(b, Limits(), 64, max_fds=4)
        assert err.value.code == "TEE_FRAME_TOO_LARGE"
        assert set(os.listdir("/proc/self/fd")) <= before
    finally:
        os.close(r)
        os.close(w)


def test_truncated_frames_and_clean_ends(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    frame = frame_bytes(request(np.ones((1, 4), np.float32)))
    a.sendall(frame[:10])
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(TeeError) as err:
        recv_reply(b, Limits(), 4096)
    assert err.value.code == "TEE_CONNECTION_LOST"
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    c.close()
    with pytest.raises(PeerClosed):
        recv_reply(d, Limits(), 4096)
    d.close()


def test_frames_larger_than_the_socket_buffer_are_sent_whole(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # force partial sends
    x = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)  # 4 MiB
    sender = threading.Thread(target=send_frame, args=(a, encode(request(x))))
    sender.start()
    body = recv_reply(b, Limits(), 1024)
    sender.join(10)
    np.testing.assert_array_equal(decode(body).params[1].array, x)  # type: ignore[union-attr]
