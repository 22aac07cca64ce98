"""The GlobalPlatform-shaped client: context -> session -> invoke (like TEEC_* over /dev/tee0).

::

    with TeeContext(socket_path) as ctx:           # TEEC_InitializeContext
        s = ctx.open_session(DEVICE_TA)             # TEEC_OpenSession (checked against the allow-list)
        out = s.invoke(DeviceCmd.DEVICE_INFO)       # TEEC_InvokeCommand
        s.close()                                   # TEEC_CloseSession

One context is one connection; calls on it are serialised by a lock (one request in flight). Use
several contexts for parallel calls (:class:`edb.tee.client.TeeClient` keeps a small pool).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy.typing as npt

from edb.errors import TeeError
from edb.tee.errors import CONNECTION_LOST, PROTOCOL, UNAVAILABLE, error_from_wire
from edb.tee.protocol import (
    DEFAULT_LIMITS,
    Blob,
    LayoutCache,
    Limits,
    Message,
    MsgType,
    Op,
    Param,
    ShmTensor,
    Tensor,
    Text,
    Value,
    decode,
    encode_fields,
    encode_tensors,
    hello_request,
)
from edb.tee.shm import Region
from edb.tee.transport import PeerClosed, read_frame, send_frame, send_rest, socket_address, widen_send_buffer

DEFAULT_TIMEOUT_S = 600.0  # installs of large models take a while; infer calls return in ms


class TeeContext:
    def __init__(
        self,
        socket_path: Path | str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        connect_timeout: float = 5.0,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.socket_path = Path(socket_path)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.closed = False
        self._reply_hint = 256  # size of the last reply body: read that much with its length prefix
        self._replies: LayoutCache | None = None  # after the hello (it depends on the negotiated limits)
        #: this connection's shared-memory region for large tensors (attached by TeeClient), if any
        self.region: Region | None = None
        try:
            self._sock.settimeout(connect_timeout)
            with socket_address(self.socket_path) as address:
                self._sock.connect(address)
            widen_send_buffer(self._sock)
        except OSError as exc:
            self._sock.close()
            raise TeeError(f"cannot reach the TEE at {self.socket_path}: {exc.strerror or exc}",
                           code=UNAVAILABLE) from exc
        self.limits = limits
        try:
            hello = hello_request()
            frame = encode_fields(MsgType.REQUEST, hello.op, 0, 0, 0, 0, hello.params, limits)
            reply = _checked(self._exchange(frame, (), 0))
            if not reply.params or not isinstance(reply.params[0], Value):
                raise TeeError("hello reply without a version", code=PROTOCOL)
            self.version = reply.params[0].a
            max_frame = reply.params[0].b
            # never accept frames larger than we were configured for, whatever the service says
            self.limits = Limits(max_frame=min(max_frame, limits.max_frame))
            self._replies = LayoutCache(self.limits)
            self._sock.settimeout(timeout)
        except BaseException:
            self._close_socket()
            raise

    # -- sessions --------------------------------------------------------------------------

    def open_session(self, ta_uuid: uuid.UUID | str) -> TeeSession:
        ta = uuid.UUID(str(ta_uuid))
        reply = self.request(Op.OPEN_SESSION, 0, 0, [Blob(ta.bytes)])
        if not reply.params or not isinstance(reply.params[0], Value):
            raise TeeError("open-session reply without a session id", code=PROTOCOL)
        return TeeSession(self, ta, reply.params[0].a)

    # -- calls -----------------------------------------------------------------------------

    def call(self, msg: Message, fds: Sequence[int] = ()) -> Message:
        """Send a request and return its response; a service-side error is raised typed."""
        return self.request(msg.op, msg.session, msg.command, msg.params, fds)

    def request(self, op: Op, session: int, command: int, params: Sequence[Param],
                fds: Sequence[int] = ()) -> Message:
        """One request/response exchange (one request in flight per connection); a service-side
        error is raised as its typed exception."""
        if self.closed:
            raise TeeError("TEE context is closed", code=CONNECTION_LOST)
        with self._lock:
            request_id = next(self._ids) & 0xFFFFFFFF
            # refused by the encoder (bad dtype, too large): raised before anything is sent, the connection stays
            frame = encode_fields(MsgType.REQUEST, op, request_id, session, command, 0, params, self.limits)
            reply = self._exchange(frame, fds, request_id)
        if reply.status:
            _checked(reply)
        return reply

    def invoke_tensors(self, session: int, command: int, lead: bytes, nlead: int,
                       tensors: Sequence[tuple[str, npt.NDArray[Any]]]) -> dict[str, npt.NDArray[Any]]:
        """INVOKE with ``nlead`` pre-encoded leading parameters then tensors, answered by uniquely
        named tensors (the ``infer`` path): no parameter objects are built to be encoded, and a
        reply whose layout repeats an earlier one is read without building a message."""
        if self.closed:
            raise TeeError("TEE context is closed", code=CONNECTION_LOST)
        with self._lock:
            request_id = next(self._ids) & 0xFFFFFFFF
            frame = encode_tensors(MsgType.REQUEST, Op.INVOKE, request_id, session, command, lead, nlead, tensors,
                                   self.limits)
            sock = self._sock
            try:  # _send_receive, inline
                total = 0
                for part in frame:
                    total += len(part)
                sent = sock.sendmsg(frame)
                if sent != total:
                    send_rest(sock, frame, sent)
                body = read_frame(sock, self.limits, self._reply_hint, 0)[0]
            except TeeError:
                self._close_socket()
                raise
            except (PeerClosed, OSError) as exc:
                raise self._lost(exc) from exc
            self._reply_hint = len(body)
            replies = self._replies
            layout = replies.lookup(body) if replies is not None else None
            if (layout is not None and layout.only_tensors and layout.mtype == MsgType.RESPONSE
                    and layout.status == 0 and int.from_bytes(body[4:8], "little") == request_id):
                out = layout.arrays(body)
                if len(out) == len(layout.tensors):
                    return out
            reply = self._decode_reply(body, request_id)
        if reply.status:
            _checked(reply)
        return self._tensors(reply)

    def invoke_params(self, session: int, command: int, params: Sequence[Param]) -> dict[str, npt.NDArray[Any]]:
        """INVOKE answered by uniquely named tensors, for requests with region tensors (built by
        the caller, whose data is already in :attr:`region`)."""
        return self._tensors(self.request(Op.INVOKE, session, command, params))

    def _tensors(self, reply: Message) -> dict[str, npt.NDArray[Any]]:
        """A reply's tensors by name; those in the region are copied out (results must outlive the
        next call, which reuses the region)."""
        result: dict[str, npt.NDArray[Any]] = {}
        for p in reply.params:
            if type(p) is Tensor and p.name not in result:
                result[p.name] = p.array
            elif type(p) is ShmTensor and p.name not in result and self.region is not None:
                result[p.name] = self.region.view(p).copy()
            else:
                raise TeeError("expected uniquely named tensors in the TEE's answer", code=PROTOCOL)
        return result

    def _exchange(self, frame: list[bytes | memoryview], fds: Sequence[int], request_id: int) -> Message:
        """Send one encoded request, read and check its reply (caller holds the lock)."""
        return self._decode_reply(self._send_receive(frame, fds), request_id)

    def _send_receive(self, frame: list[bytes | memoryview], fds: Sequence[int]) -> memoryview:
        sock = self._sock
        try:
            send_frame(sock, frame, fds)
            body = read_frame(sock, self.limits, self._reply_hint, 0)[0]
        except TeeError:
            self._close_socket()
            raise
        except (PeerClosed, OSError) as exc:
            raise self._lost(exc) from exc
        self._reply_hint = len(body)
        return body

    def _lost(self, exc: PeerClosed | OSError) -> TeeError:
        """The connection is unusable after a failed exchange: close it; the error to raise."""
        self._close_socket()
        if isinstance(exc, PeerClosed):
            return TeeError("the TEE closed the connection", code=CONNECTION_LOST)
        # OSError: timeouts, EPIPE, ECONNRESET
        return TeeError(f"connection to the TEE failed: {exc.strerror or exc}", code=CONNECTION_LOST)

    def _decode_reply(self, body: memoryview, request_id: int) -> Message:
        replies = self._replies
        try:
            reply = replies.decode(body) if replies is not None else decode(body, limits=self.limits)
        except TeeError:
            self._close_socket()  # the stream can no longer be trusted to be in sync
            raise
        if reply.type != MsgType.RESPONSE or reply.request_id != request_id:
            self._close_socket()
            raise TeeError("response does not match the request", code=PROTOCOL)
        return reply

    # -- lifecycle -------------------------------------------------------------------------

    def _close_socket(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self._sock.close()
        region, self.region = self.region, None
        if region is not None:
            region.close()

    def close(self) -> None:
        """TEEC_FinalizeContext: the service closes this connection's sessions and releases what
        they held (model handles and install transactions die with the last connection of a process)."""
        self._close_socket()

    def __enter__(self) -> TeeContext:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def fileno(self) -> int:
        return self._sock.fileno()


def _checked(reply: Message) -> Message:
    """The reply, or the service's error raised as its typed exception."""
    if reply.status:
        code = reply.params[0].text if reply.params and isinstance(reply.params[0], Text) else PROTOCOL
        text = reply.params[1].text if len(reply.params) > 1 and isinstance(reply.params[1], Text) else ""
        raise error_from_wire(code, text)
    return reply


class TeeSession:
    def __init__(self, context: TeeContext, ta: uuid.UUID, session_id: int) -> None:
        self.context = context
        self.ta = ta
        self.id = session_id

    def invoke(self, command: int, params: Sequence[Param] = (), fds: Sequence[int] = ()) -> list[Param]:
        return self.context.request(Op.INVOKE, self.id, command, params, fds).params

    def close(self) -> None:
        if not self.context.closed:
            self.context.request(Op.CLOSE_SESSION, self.id, 0, ())


def pass_file(path: Path | str) -> int:
    """An O_RDONLY descriptor for a package file, to pass to the TEE (caller closes it)."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
