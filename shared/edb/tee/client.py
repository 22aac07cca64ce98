"""Typed TEE client (Contract 4): what the package installer and the inference runner call.

::

    tee = TeeClient(".edb/devices/dev-1/tee.sock")
    info = tee.device_info()
    t = tee.begin_install("classifier", "cache/classifier-3.cpk")    # TEE verifies before any key release
    ev = tee.get_install_evidence(t, nonce)                           # -> key release service
    summary = tee.complete_install(t, jwe)                            # unwrap, decrypt in memory, seal, floor
    h = tee.load_model("classifier")
    y = tee.infer(h, {"input": x})["output"]

Connections are pooled (one per concurrent caller thread, up to ``max_connections``), so a runner
can load a new version on one thread while another keeps serving ``infer``. If the service restarts,
the next call reconnects (with backoff for up to ``reconnect_s``); a model handle from before the
restart is reloaded transparently by name if the same version is still installed, otherwise the call
fails with ``TEE_HANDLE_STALE``. Install transactions do not survive a restart: start again.
"""

from __future__ import annotations

import json
import os
import select
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from edb.errors import TeeError
from edb.tee import errors as E
from edb.tee.commands import (
    DEVICE_TA,
    INSTALLER_TA,
    LOAD_IN_PLACE,
    LOAD_PREPACK,
    RUNNER_TA,
    DeviceCmd,
    InstallerCmd,
    RunnerCmd,
)
from edb.tee.context import DEFAULT_TIMEOUT_S, TeeContext, TeeSession
from edb.tee.protocol import Blob, Fd, Param, Tensor, Text, Value, value_param
from edb.tee.shm import DEFAULT_REGION_BYTES, DEFAULT_THRESHOLD, Region, align, create_region
from edb.tee.types import (
    DeviceInfo,
    Evidence,
    InstalledPackage,
    InstallSummary,
    InstallTicket,
    ModelHandle,
    ModelMetadata,
)

Array = npt.NDArray[Any]
_RETRYABLE = {E.UNAVAILABLE, E.CONNECTION_LOST}


class _Conn:
    __slots__ = ("ctx", "sessions")

    def __init__(self, ctx: TeeContext) -> None:
        self.ctx = ctx
        self.sessions: dict[int, TeeSession] = {}  # by the trusted app UUID's integer (uuid.UUID hashes in Python)

    def session(self, ta: uuid.UUID) -> TeeSession:
        s = self.sessions.get(ta.int)
        if s is None:
            s = self.sessions[ta.int] = self.ctx.open_session(ta)
        return s


class TeeClient:
    def __init__(
        self,
        socket_path: Path | str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        reconnect_s: float = 10.0,
        max_connections: int = 4,
        shm_threshold: int | None = DEFAULT_THRESHOLD,
        shm_bytes: int = DEFAULT_REGION_BYTES,
    ) -> None:
        if shm_threshold is not None and shm_threshold < 1:
            raise ValueError("shm_threshold must be at least 1 byte (None: never use shared memory)")
        self.socket_path = Path(socket_path)
        #: numeric tensors of at least this many bytes cross in a shared-memory region (None: never)
        self.shm_threshold = shm_threshold
        self.shm_bytes = shm_bytes  # the region's size, per connection (the TEE maps at most 64 MiB)
        self.timeout = timeout
        self.reconnect_s = reconnect_s
        self.max_connections = max_connections
        self._idle: list[_Conn] = []
        self._count = 0
        self._waiting = 0  # threads waiting for a connection (notify only when there are some)
        # a plain lock on the per-call path; the condition is only for waiting when the pool is full
        self._pool_lock = threading.Lock()
        self._cond = threading.Condition(self._pool_lock)
        self._handles: dict[int, ModelHandle] = {}  # handles this client loaded, by id (current ids)
        self._remap: dict[int, int] = {}  # handle id from before a TEE restart -> current id
        self._leads: dict[int, bytes] = {}  # handle id -> its encoded Value parameter
        self._closed = False

    # -- connection pool ---------------------------------------------------------------------

    def _connect(self) -> _Conn:
        deadline = time.monotonic() + self.reconnect_s
        delay = 0.05
        while True:
            try:
                return _Conn(TeeContext(self.socket_path, timeout=self.timeout))
            except TeeError as exc:
                if exc.code not in _RETRYABLE or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _acquire(self, check_stale: bool) -> _Conn:
        """An idle connection (dead ones dropped when ``check_stale``), else a new one."""
        with self._pool_lock:
            while True:
                if self._closed:
                    raise TeeError("TEE client is closed", code=E.CONNECTION_LOST)
                if self._idle:
                    conn = self._idle.pop()
                    if check_stale and _stale(conn):
                        conn.ctx.close()  # the service closed it (restart): replace it before sending
                        self._count -= 1
                        continue
                    return conn
                if self._count < self.max_connections:
                    self._count += 1
                    break
                self._waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1
        try:
            return self._connect()
        except BaseException:
            with self._pool_lock:
                self._count -= 1
                if self._waiting:
                    self._cond.notify()
            raise

    def _release(self, conn: _Conn) -> None:
        with self._pool_lock:
            if conn.ctx.closed or self._closed:
                conn.ctx.close()
                self._count -= 1
            else:
                self._idle.append(conn)
            if self._waiting:
                self._cond.notify()

    def _invoke(self, ta: uuid.UUID, cmd: int, params: Sequence[Param] = (), fds: Sequence[int] = (),
                *, idempotent: bool = True) -> list[Param]:
        """One command on a pooled connection. Idempotent calls skip the liveness probe of an idle
        connection (a system call per call) and instead retry once, probing, if it was dead;
        other calls probe first, so they are never sent on a connection the service has closed."""
        attempts = 2 if idempotent else 1
        for attempt in range(attempts):
            conn = self._acquire(check_stale=attempt > 0 or not idempotent)
            try:
                return conn.session(ta).invoke(cmd, params, fds)
            except TeeError as exc:
                if exc.code != E.CONNECTION_LOST or attempt + 1 == attempts:
                    raise
            finally:
                self._release(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    def _invoke_tensors(self, ta: uuid.UUID, cmd: int, lead: bytes, nlead: int,
                        tensors: Sequence[tuple[str, Array]]) -> dict[str, Array]:
        """:meth:`_invoke` for the ``infer`` shape of request (idempotent: retried once)."""
        for attempt in range(2):
            conn = None
            if attempt == 0:  # the common case inline: an idle connection, no probe
                with self._pool_lock:
                    if self._idle and not self._closed:
                        conn = self._idle.pop()
            if conn is None:
                conn = self._acquire(check_stale=attempt > 0)
            try:
                session = conn.sessions.get(ta.int) or conn.session(ta)
                return conn.ctx.invoke_tensors(session.id, cmd, lead, nlead, tensors)
            except TeeError as exc:
                if exc.code != E.CONNECTION_LOST or attempt == 1:
                    raise
            finally:
                self._release(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    def _invoke_region(self, ta: uuid.UUID, cmd: int, hid: int,
                       tensors: Sequence[tuple[str, Array]]) -> dict[str, Array]:
        """:meth:`_invoke_tensors` for requests with a tensor of at least ``shm_threshold`` bytes:
        those go through the connection's shared-memory region (attached on first use)."""
        for attempt in range(2):
            conn = self._acquire(check_stale=attempt > 0)
            try:
                session = conn.session(ta)
                ctx = conn.ctx
                region = ctx.region
                if region is None:
                    region = ctx.region = self._attach_region(session)
                params: list[Param] = [Value(hid)]
                offset = 0
                for name, arr in tensors:
                    if region.fits(arr, offset):
                        params.append(region.put(name, arr, offset))  # the one copy: into the region
                        offset = align(offset + arr.nbytes)
                    else:
                        params.append(Tensor(name, arr))
                return ctx.invoke_params(session.id, cmd, params)
            except TeeError as exc:
                if exc.code != E.CONNECTION_LOST or attempt == 1:
                    raise
            finally:
                self._release(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    def _attach_region(self, session: TeeSession) -> Region:
        """A sealed memfd region for this connection, passed to the TEE (which checks and maps it)."""
        threshold = self.shm_threshold or DEFAULT_THRESHOLD
        region, fd = create_region(self.shm_bytes, threshold)
        try:
            session.invoke(RunnerCmd.ATTACH_REGION, [Fd(0), Value(threshold)], [fd])
        except BaseException:
            region.close()
            raise
        finally:
            os.close(fd)
        return region

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for conn in self._idle:
                conn.ctx.close()
            self._idle.clear()
            self._cond.notify_all()  # waiters see the client closed

    def __enter__(self) -> TeeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- device TA ---------------------------------------------------------------------------

    def device_info(self) -> DeviceInfo:
        return DeviceInfo.from_json(_json(self._invoke(DEVICE_TA, DeviceCmd.DEVICE_INFO)))

    def get_evidence(self, nonce: str, user_data: bytes = b"") -> Evidence:
        """Evidence not bound to a package (device health checks); installs use
        :meth:`get_install_evidence`."""
        out = self._invoke(DEVICE_TA, DeviceCmd.GET_EVIDENCE, [Text(nonce), Blob(user_data)])
        return Evidence.from_json(_json(out))

    def list_installed(self) -> list[InstalledPackage]:
        data = _json(self._invoke(DEVICE_TA, DeviceCmd.LIST_INSTALLED))
        if not isinstance(data, list):
            raise TeeError("installed list is not a list", code=E.PROTOCOL)
        return [InstalledPackage.from_json(item) for item in data]

    def legacy_public_key(self) -> bytes:
        """LEGACY (weaker, v1 interop): the TEE's RSA-2048 public key (SubjectPublicKeyInfo DER) for
        the original tools' wrap contract. Anyone holding the wrap endpoint's key can wrap to it; there
        is no attestation behind it."""
        out = self._invoke(DEVICE_TA, DeviceCmd.LEGACY_PUBLIC_KEY)
        return bytes(_blob(out))

    def status(self) -> dict[str, Any]:
        data = _json(self._invoke(DEVICE_TA, DeviceCmd.STATUS))
        if not isinstance(data, dict):
            raise TeeError("status is not an object", code=E.PROTOCOL)
        return data

    # -- installer TA ------------------------------------------------------------------------

    def begin_install(self, name: str, package_file: Path | str | int | IO[bytes]) -> InstallTicket:
        """Hand the package to the TEE as a file descriptor (it reads the file itself, nothing is
        copied through the socket) and let it verify signature, chain, target, expiry and the
        rollback floor before any key is requested."""
        if isinstance(package_file, int):
            fd, owned = package_file, False
        elif isinstance(package_file, (str, Path)):
            fd, owned = os.open(package_file, os.O_RDONLY | os.O_CLOEXEC), True
        else:
            fd, owned = package_file.fileno(), False
        try:
            out = self._invoke(INSTALLER_TA, InstallerCmd.BEGIN_INSTALL, [Text(name), Fd(0)], [fd],
                               idempotent=False)
        finally:
            if owned:
                os.close(fd)
        return InstallTicket.from_json(_json(out))

    def get_install_evidence(self, ticket: InstallTicket, nonce: str) -> Evidence:
        out = self._invoke(INSTALLER_TA, InstallerCmd.GET_INSTALL_EVIDENCE, [Text(ticket.txn), Text(nonce)],
                           idempotent=False)
        return Evidence.from_json(_json(out))

    def complete_install(self, ticket: InstallTicket, jwe: str) -> InstallSummary:
        out = self._invoke(INSTALLER_TA, InstallerCmd.COMPLETE_INSTALL, [Text(ticket.txn), Text(jwe)],
                           idempotent=False)
        return InstallSummary.from_json(_json(out))

    def complete_install_legacy(self, ticket: InstallTicket, wrapped_key_b64: str) -> InstallSummary:
        """LEGACY (weaker, v1 interop): the content key RSA-PKCS#1 v1.5-wrapped to
        :meth:`legacy_public_key`. No attestation, no signature by a pinned publisher."""
        out = self._invoke(INSTALLER_TA, InstallerCmd.COMPLETE_INSTALL_LEGACY,
                           [Text(ticket.txn), Text(wrapped_key_b64)], idempotent=False)
        return InstallSummary.from_json(_json(out))

    def abort_install(self, ticket: InstallTicket) -> None:
        self._invoke(INSTALLER_TA, InstallerCmd.ABORT_INSTALL, [Text(ticket.txn)])

    def uninstall(self, name: str) -> None:
        self._invoke(INSTALLER_TA, InstallerCmd.UNINSTALL, [Text(name)])

    # -- runner TA ---------------------------------------------------------------------------

    def load_model(self, name: str, *, prepack: bool | None = None) -> ModelHandle:
        """Load the installed model ``name`` into ONNX Runtime inside the TEE.

        ``prepack=False``: weights are used in place from the TEE's decrypted buffer (peak memory
        about one model size). ``prepack=True``: ONNX Runtime also keeps prepacked copies of
        MatMul/Conv weights (much faster for batched inputs, about twice the memory). ``None``
        (default): the TEE prepacks models up to its ``prepackMaxBytes`` (64 MiB by default) and
        loads larger ones in place. ``handle.prepacked`` says what was done."""
        flags = 0 if prepack is None else (LOAD_PREPACK if prepack else LOAD_IN_PLACE)
        out = self._invoke(RUNNER_TA, RunnerCmd.LOAD_MODEL, [Text(name), Value(flags)])
        h = ModelHandle.from_json(_json(out))
        with self._cond:
            self._handles[h.handle] = h
        return h

    def infer(self, handle: ModelHandle, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run the model. Numeric arrays travel in the frame without copies in user space; numeric
        results are arrays backed by the received frame. A request with a numeric tensor of at least
        ``shm_threshold`` bytes goes through the connection's shared-memory region instead: such
        tensors are copied into it, and outputs of at least the threshold are copied out of it
        (results are the caller's, whatever the next call does). String tensors (numpy ``str`` arrays or
        object arrays of ``str``) are encoded as UTF-8 within the bounds of
        :class:`edb.tee.protocol.Limits` (``TEE_STRING_*`` before anything is sent) and come back as
        object arrays of ``str``. Outputs that are not tensors (ZipMap's maps) are not returned."""
        tensors = [(k, v if type(v) is np.ndarray else np.asarray(v)) for k, v in inputs.items()]
        hid = self._remap.get(handle.handle, handle.handle) if self._remap else handle.handle
        large = False
        threshold = self.shm_threshold
        if threshold is not None:
            for _, arr in tensors:
                if arr.nbytes >= threshold:
                    large = True
                    break
        for attempt in range(2):
            if large:
                try:
                    return self._invoke_region(RUNNER_TA, RunnerCmd.INFER, hid, tensors)
                except TeeError as exc:
                    if exc.code != E.UNKNOWN_HANDLE or attempt == 1 or handle.handle not in self._known():
                        raise
                    hid = self._reload(handle)
                    continue
            lead = self._leads.get(hid)
            if lead is None:
                lead = value_param(hid)
                if len(self._leads) >= 64:
                    self._leads.clear()
                self._leads[hid] = lead
            try:
                return self._invoke_tensors(RUNNER_TA, RunnerCmd.INFER, lead, 1, tensors)
            except TeeError as exc:
                if exc.code != E.UNKNOWN_HANDLE or attempt == 1 or handle.handle not in self._known():
                    raise
                hid = self._reload(handle)
        raise AssertionError("unreachable")  # pragma: no cover

    def infer_many(self, handle: ModelHandle, batch: Sequence[Mapping[str, Array]]) -> list[dict[str, Array]]:
        """Batching: stack many requests along axis 0, run the model once, split the results by the
        rows each request contributed. Every request must have the same input names."""
        if not batch:
            return []
        names = list(batch[0])
        rows = [int(np.asarray(item[names[0]]).shape[0]) for item in batch]
        stacked = {n: np.concatenate([np.asarray(item[n]) for item in batch], axis=0) for n in names}
        out = self.infer(handle, stacked)
        bounds = np.cumsum(rows)[:-1]
        split = {k: np.split(v, bounds, axis=0) for k, v in out.items()}
        return [{k: split[k][i] for k in split} for i in range(len(batch))]

    def model_metadata(self, handle: ModelHandle) -> ModelMetadata:
        """The loaded model's producer, opsets and ``metadata_props`` (bounded; see
        :class:`edb.tee.types.ModelMetadata`)."""
        out = self._invoke(RUNNER_TA, RunnerCmd.MODEL_METADATA, [Value(self._current_id(handle))])
        return ModelMetadata.from_json(_json(out))

    def unload(self, handle: ModelHandle) -> None:
        hid = self._current_id(handle)
        with self._cond:
            self._handles.pop(hid, None)
            self._handles.pop(handle.handle, None)
            self._remap.pop(handle.handle, None)
        try:
            self._invoke(RUNNER_TA, RunnerCmd.UNLOAD, [Value(hid)])
        except TeeError as exc:
            if exc.code != E.UNKNOWN_HANDLE:  # gone already (TEE restarted): nothing to release
                raise

    def _known(self) -> set[int]:
        with self._cond:
            return set(self._handles) | set(self._remap)

    def _current_id(self, handle: ModelHandle) -> int:
        with self._cond:
            return self._remap.get(handle.handle, handle.handle)

    def _reload(self, handle: ModelHandle) -> int:
        fresh = self.load_model(handle.name, prepack=handle.prepacked)
        if fresh.version != handle.version:
            self.unload(fresh)
            raise TeeError(f"model {handle.name!r} is now version {fresh.version}, the handle was for "
                           f"{handle.version}; load it again", code=E.HANDLE_STALE)
        with self._cond:
            self._remap[handle.handle] = fresh.handle
        return fresh.handle


def _stale(conn: _Conn) -> bool:
    """An idle connection with anything to read is dead: the service never speaks unasked."""
    poller = select.poll()
    poller.register(conn.ctx.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


def _blob(out: list[Param]) -> bytes | bytearray | memoryview:
    if len(out) != 1 or not isinstance(out[0], Blob):
        raise TeeError("expected one blob in the TEE's answer", code=E.PROTOCOL)
    return out[0].data


def _json(out: list[Param]) -> Any:
    data = _blob(out)
    try:
        return json.loads(bytes(data))
    except ValueError as exc:
        raise TeeError("TEE answer is not JSON", code=E.PROTOCOL) from exc

