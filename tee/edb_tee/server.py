"""The TEE service's socket side: a Unix stream socket (mode 0600), SO_PEERCRED allow-list, one
thread per connection, the hello handshake, sessions, and dispatch to the trusted apps.

A connection whose peer holds no role is answered ``TEE_ACCESS_DENIED`` and closed before anything
else is read. Opening a session to a trusted app needs a role that the configuration allows for it.
Every frame is bounded (``maxFrameBytes``) before it is allocated; a malformed frame is answered
with ``TEE_PROTOCOL`` / ``TEE_FRAME_TOO_LARGE`` and the connection is closed (the stream cannot be
trusted to be in sync afterwards). Errors travel as ``(code, message)``; messages never carry
secrets, and unexpected exceptions become ``TEE_INTERNAL`` with details only in the log.

Quotas (:mod:`edb_tee.quotas`, decided at accept from SO_PEERCRED): connections per process and
per role, with a reserve kept for the installer and admin roles, so runner-role processes holding
every connection they may cannot stop an install. A frame must arrive whole within
``frameDeadlineSeconds`` of its first byte (``TEE_FRAME_TIMEOUT``), and the declared lengths of
frames still arriving are held against ``maxPendingFrameBytes`` with the same reserves
(``TEE_BUSY``); a reply the peer does not read within the same deadline drops the connection
(``SO_SNDTIMEO``). A connection over a quota is answered ``TEE_BUSY`` after its hello, by at most
:data:`MAX_REFUSING` threads at a time (beyond that it is closed unanswered).

Per connection the loop keeps a :class:`~edb.tee.protocol.LayoutCache` (a request whose metadata
bytes repeat an earlier one is not parsed again) and an :class:`~edb_tee.lane.InferLane` (a
repeated runner ``infer`` goes straight to the model manager): the per-call path of a runner.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import uuid
from pathlib import Path

from edb.errors import EdbError, TeeError
from edb.tee import errors as E
from edb.tee.protocol import (
    PROTOCOL_VERSION,
    Blob,
    LayoutCache,
    Limits,
    Message,
    MsgType,
    Op,
    Value,
    decode,
    encode,
    encode_fields,
    error_message,
    negotiate,
)
from edb.tee.transport import (
    PeerClosed,
    PeerCredentials,
    peer_credentials,
    recv_frame,
    recv_request,
    send_frame,
    socket_address,
    widen_send_buffer,
)
from edb_tee.access import may_open, roles_of
from edb_tee.core import TeeCore
from edb_tee.lane import InferLane
from edb_tee.quotas import Grant, Quota, connection_quota, frame_memory_quota
from edb_tee.tas import REGISTRY, Call, Connection, TrustedApp

log = logging.getLogger("edb_tee.server")
HANDSHAKE_TIMEOUT_S = 5.0
HELLO_LIMITS = Limits(max_frame=1024)  # read before the peer is known to be allowed: keep it tiny
MAX_REFUSING = 8  # threads answering over-quota connections at once (each lives <= the handshake timeout)


class PendingFrames:
    """The frame-memory quota of one connection's peer, as the transport asks for it
    (:class:`edb.tee.transport.PartialFrames`): hold a frame's declared length until it has arrived."""

    __slots__ = ("_grant", "_lock", "_quota", "deadline_s", "pid", "roles")

    def __init__(self, quota: Quota, lock: threading.Lock, pid: int, roles: frozenset[str], deadline_s: float) -> None:
        self._quota, self._lock = quota, lock
        self.pid, self.roles, self.deadline_s = pid, roles, deadline_s
        self._grant: Grant | None = None

    def hold(self, nbytes: int) -> bool:
        with self._lock:
            self._grant = self._quota.take(self.pid, self.roles, nbytes)
        return self._grant is not None

    def release(self, nbytes: int) -> None:
        grant, self._grant = self._grant, None
        if grant is not None:
            with self._lock:
                self._quota.give(grant)


class TeeServer:
    def __init__(self, core: TeeCore, socket_path: Path) -> None:
        self.core = core
        self.socket_path = socket_path
        measured = core.state.config.measured
        self.limits = Limits(max_frame=measured.max_frame_bytes)
        self.frame_deadline_s = float(measured.frame_deadline_s)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self.connections = connection_quota(measured.max_connections)
        self.frame_memory = frame_memory_quota(measured.max_pending_frame_bytes)
        self._refusing = 0
        self._listener: socket.socket | None = None
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------

    def bind(self) -> None:
        """Listen on the socket path. The socket is bound, given its mode and listening under a
        temporary name, then renamed into place: a client that sees the path can connect (a
        connect between bind and listen would be refused, ECONNREFUSED)."""
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # we hold the device lock, so a socket file left here is stale
        for stale in (path, staging):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            old = os.umask(0o177)
            try:
                with socket_address(staging) as address:
                    listener.bind(address)
            finally:
                os.umask(old)
            self._set_mode(staging)
            listener.listen(64)
            os.replace(staging, path)
        except BaseException:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
            raise
        self._listener = listener
        log.info("listening on %s (protocol %d)", path, PROTOCOL_VERSION)

    def _set_mode(self, path: Path) -> None:
        os.chmod(path, 0o600)

    def serve_forever(self) -> None:
        assert self._listener is not None, "bind() first"
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._stopping:
                    break
                raise
            self._admit(conn)

    def shutdown(self) -> None:
        self._stopping = True
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    # -- connections -------------------------------------------------------------------------

    def _admit(self, conn: socket.socket) -> None:
        """Decide at accept, from the kernel's credentials: a connection within its quotas gets a
        thread that serves it; one over them (or from a process with no role) a short-lived thread
        that answers its hello with the refusal, while there are fewer than MAX_REFUSING of those."""
        try:
            peer = peer_credentials(conn)
        except OSError:
            conn.close()
            return
        roles = roles_of(peer, self.core.state.config.access)
        with self._lock:
            grant = self.connections.take(peer.pid, roles) if roles else None
            if grant is not None:
                self._conns.add(conn)
            elif self._refusing < MAX_REFUSING:
                self._refusing += 1
            else:
                conn.close()  # a flood of connections: not even a refusal costs more than this
                return
        if grant is None:
            threading.Thread(target=self._refuse_connection, args=(conn, peer, roles), daemon=True,
                             name="tee-refuse").start()
            return
        threading.Thread(target=self._serve_connection, args=(conn, peer, roles, grant), daemon=True,
                         name="tee-conn").start()

    def _refuse_connection(self, conn: socket.socket, peer: PeerCredentials, roles: frozenset[str]) -> None:
        try:
            hello = self._hello(conn)
            if hello is None:
                return
            if not roles:
                log.warning("refused pid %d uid %d gid %d: not on the allow-list", peer.pid, peer.uid, peer.gid)
                self._refuse(conn, hello, E.ACCESS_DENIED, "this process is not allowed to use the TEE")
            else:
                log.warning("refused pid %d uid %d: over its connection quota", peer.pid, peer.uid)
                self._refuse(conn, hello, E.BUSY, "too many connections (this process's or its role's quota)")
        except (PeerClosed, OSError):
            pass
        finally:
            conn.close()
            with self._lock:
                self._refusing -= 1

    def _serve_connection(self, conn: socket.socket, peer: PeerCredentials, roles: frozenset[str],
                          grant: Grant) -> None:
        widen_send_buffer(conn)
        try:
            self._run(conn, peer, roles)
        except (PeerClosed, OSError):
            pass
        except Exception:  # never let one connection take the service down
            log.exception("connection from pid %d failed", peer.pid)
        finally:
            with self._lock:
                self._conns.discard(conn)
                self.connections.give(grant)
                last = self.connections.held_by(peer.pid) == 0
            conn.close()
            if last:
                self.core.release_owner(peer.pid)

    def _refuse(self, conn: socket.socket, request: Message, code: str, message: str) -> None:
        with contextlib.suppress(OSError, EdbError):
            send_frame(conn, encode(error_message(request, code, message), self.limits))

    def _hello(self, conn: socket.socket) -> Message | None:
        """The peer's hello within the handshake timeout, or None (answered with the error)."""
        conn.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            hello_body, _ = recv_frame(conn, HELLO_LIMITS)
            hello = decode(hello_body, limits=HELLO_LIMITS)
            negotiate(hello)
        except TeeError as exc:
            self._refuse(conn, Message(MsgType.REQUEST, Op.HELLO), exc.code, exc.message)
            return None
        return hello

    def _run(self, conn: socket.socket, peer: PeerCredentials, roles: frozenset[str]) -> None:
        hello = self._hello(conn)
        if hello is None:
            return
        version = negotiate(hello)
        reply = Message(MsgType.RESPONSE, Op.HELLO, hello.request_id, params=[Value(version, self.limits.max_frame)])
        send_frame(conn, encode(reply, self.limits))
        conn.settimeout(None)  # idle between requests as long as the client likes; frames have deadlines
        whole, frac = divmod(self.frame_deadline_s, 1.0)  # a reply unread this long drops the connection
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(whole), int(frac * 1e6)))
        pending = PendingFrames(self.frame_memory, self._lock, peer.pid, roles, self.frame_deadline_s)
        state = Connection()  # its shared-memory region, if the client attaches one
        try:
            self._loop(conn, peer, roles, state, pending)
        finally:
            state.close()  # close the region: a client that disappears frees it

    def _loop(self, conn: socket.socket, peer: PeerCredentials, roles: frozenset[str], state: Connection,
              pending: PendingFrames) -> None:
        sessions: dict[int, TrustedApp] = {}
        next_session = 1
        limits, core = self.limits, self.core
        requests = LayoutCache(limits)  # a client's repeated infer requests are not parsed again
        lane: InferLane | None = None  # ... nor dispatched again (see edb_tee.lane)
        hint = 256  # size of the previous request: read that much with the next length prefix
        while True:
            fds: list[int] = []
            try:
                body, fds = recv_request(conn, limits, hint, max_fds=limits.max_fds, partial=pending)
                hint = len(body)
                if lane is not None and not fds:
                    fast = lane.serve(body)
                    if fast is not None:
                        send_frame(conn, fast)
                        continue
                msg = requests.decode(body, nfds=len(fds))
                if msg.type != MsgType.REQUEST:
                    raise TeeError("expected a request", code=E.PROTOCOL)
            except TeeError as exc:
                for fd in fds:
                    os.close(fd)
                self._refuse(conn, Message(MsgType.REQUEST, Op.INVOKE), exc.code, exc.message)
                return
            call = Call(core, peer, msg.params, fds, conn=state)
            op = msg.op
            try:
                if op == Op.INVOKE:
                    ta = sessions.get(msg.session)
                    if ta is None:
                        raise TeeError("no such session", code=E.UNKNOWN_SESSION)
                    learned = InferLane.learn(requests.last, msg, ta.name, core.models, peer.pid, limits, state)
                    if learned is not None:  # the latest shape of infer request wins
                        lane = learned
                    out = ta.invoke(msg.command, call)
                elif op == Op.OPEN_SESSION:
                    sid = next_session
                    sessions[sid] = self._open(msg, roles)
                    next_session += 1
                    out = [Value(sid)]
                elif op == Op.CLOSE_SESSION:
                    if sessions.pop(msg.session, None) is None:
                        raise TeeError("no such session", code=E.UNKNOWN_SESSION)
                    if lane is not None and lane.session == msg.session:
                        lane = None
                    out = []
                else:
                    raise TeeError("unexpected operation", code=E.PROTOCOL)
                frame = encode_fields(MsgType.RESPONSE, op, msg.request_id, msg.session, msg.command, 0, out, limits)
            except EdbError as exc:  # including outputs the encoder refuses (too large for a frame)
                frame = encode(error_message(msg, exc.code, exc.message), limits)
            except Exception:
                log.exception("internal error in %s command %d", op.name, msg.command)
                frame = encode(error_message(msg, E.INTERNAL, "internal error in the TEE (see its log)"), limits)
            finally:
                if fds:
                    call.close_untaken()
            send_frame(conn, frame)

    def _open(self, msg: Message, roles: frozenset[str]) -> TrustedApp:
        if len(msg.params) != 1 or not isinstance(msg.params[0], Blob) or len(msg.params[0].data) != 16:
            raise TeeError("open session takes the trusted app's UUID (16 bytes)", code=E.BAD_PARAMETERS)
        ta_id = uuid.UUID(bytes=bytes(msg.params[0].data))
        ta = REGISTRY.get(ta_id)
        if ta is None:
            raise TeeError(f"no trusted app {ta_id}", code=E.UNKNOWN_TA)
        if not may_open(roles, ta.name, self.core.state.config.access):
            raise TeeError(f"this process may not use the {ta.name} trusted app", code=E.ACCESS_DENIED)
        return ta
