"""The workload API on Unix sockets, one per module (IoT Edge 1.2+ does the same: each module
container gets its own workload socket, and the daemon knows the caller by the socket it came on).

Each socket lives in a directory of mode 0700 and is itself 0600; connections are also checked
with SO_PEERCRED against the allowed user ids (by default the agent's own).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from edb_local.workload.errors import BAD_REQUEST, PEER_REFUSED, SOCKET_DIR, WorkloadError
from edb_local.workload.signer import WorkloadSigner

log = logging.getLogger(__name__)

_CALLER = web.AppKey("caller", str)
_ALLOWED = web.AppKey("allowed_uids", frozenset)
_MAX_BODY = 16 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(exc: WorkloadError) -> web.Response:
    return web.json_response({"error": exc.to_dict()}, status=exc.http_status)


class WorkloadServer:
    def __init__(self, signer: WorkloadSigner, trust_bundle_pem: str, socket_dir: Path,
                 allowed_uids: frozenset[int] | None = None) -> None:
        self.signer = signer
        self.trust_bundle_pem = trust_bundle_pem
        self.socket_dir = socket_dir
        self.allowed_uids = allowed_uids if allowed_uids is not None else frozenset({os.getuid()})
        self._runners: dict[str, web.AppRunner] = {}
        self._owners: dict[str, int | None] = {}

    def socket_path(self, module_id: str) -> Path:
        return self.socket_dir / f"{module_id}.sock"

    def workload_uri(self, module_id: str) -> str:
        return f"unix://{self.socket_path(module_id)}"

    async def add_module(self, module_id: str, owner_uid: int | None = None) -> str:
        """Serve ``module_id``'s socket (idempotent); returns its ``IOTEDGE_WORKLOADURI``.
        ``owner_uid``: a module container's uid, which gets the socket (0600) and may use it too
        (the socket file alone is bound into that container)."""
        if module_id in self._runners and self._owners.get(module_id) != owner_uid:
            await self.remove_module(module_id)
        if module_id not in self._runners:
            prepare_socket_dir(self.socket_dir)
            path = self.socket_path(module_id)
            path.unlink(missing_ok=True)
            app = web.Application(client_max_size=_MAX_BODY, middlewares=[self._peer_check])
            app[_CALLER] = module_id
            app[_ALLOWED] = self.allowed_uids | ({owner_uid} if owner_uid is not None else set())
            app.router.add_get("/trust-bundle", self._trust_bundle)
            app.router.add_post("/modules/{module}/genid/{genid}/sign", self._sign)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.UnixSite(runner, str(path)).start()
            os.chmod(path, 0o600)
            if owner_uid is not None and owner_uid != os.getuid():
                os.chown(path, owner_uid, -1)
            self._runners[module_id] = runner
            self._owners[module_id] = owner_uid
        return self.workload_uri(module_id)

    async def remove_module(self, module_id: str) -> None:
        runner = self._runners.pop(module_id, None)
        self._owners.pop(module_id, None)
        if runner is not None:
            await runner.cleanup()
        self.socket_path(module_id).unlink(missing_ok=True)

    async def close(self) -> None:
        for module_id in list(self._runners):
            await self.remove_module(module_id)
        with contextlib.suppress(OSError):  # only if empty: never remove what we did not create
            self.socket_dir.rmdir()

    @web.middleware
    async def _peer_check(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            _require_api_version(request)
            uid = _peer_uid(request)
            if uid not in request.app[_ALLOWED]:
                raise WorkloadError(f"uid {uid} may not use the workload API", code=PEER_REFUSED)
            return await handler(request)
        except WorkloadError as exc:
            log.warning("workload API refused %s %s for %s: %s", request.method, request.path,
                        request.app[_CALLER], exc.code)
            return _error(exc)

    async def _trust_bundle(self, request: web.Request) -> web.Response:
        return web.json_response({"certificate": self.trust_bundle_pem})

    async def _sign(self, request: web.Request) -> web.Response:
        # The SDK posts JSON without a content type, so parse the body ourselves.
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise WorkloadError("body is not JSON", code=BAD_REQUEST) from None
        digest = self.signer.sign(
            caller=request.app[_CALLER],
            module_id=request.match_info["module"],
            generation_id=request.match_info["genid"],
            body=body,
            now=time.time(),
        )
        log.info("workload API signed a SAS token for %s", request.app[_CALLER])
        return web.json_response({"digest": digest})


def _require_api_version(request: web.Request) -> None:
    if not request.query.get("api-version"):
        raise WorkloadError("api-version query parameter is required", code=BAD_REQUEST)


def _peer_uid(request: web.Request) -> int:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        raise WorkloadError("cannot identify the caller", code=PEER_REFUSED)
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def prepare_socket_dir(path: Path) -> None:
    """Create the socket directory 0700 and refuse one that another user could write to."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.getuid():
        raise WorkloadError(f"workload socket directory {path} is not a directory owned by this user",
                            code=SOCKET_DIR)
    os.chmod(path, 0o700)
