"""The workload API server with the SDK's own edge HSM client (its production path's HTTP calls)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import requests_unixsocket  # noqa: F401  (the SDK's transport: registers http+unix:// with requests)
from azure.iot.device.iothub.edge_hsm import IoTEdgeError, IoTEdgeHsm

from edb_local.agent.config import workload_socket_dir
from edb_local.stack_ca import StackCA
from edb_local.workload.errors import WorkloadError
from edb_local.workload.server import WorkloadServer, prepare_socket_dir
from edb_local.workload.signer import ModuleCredential, WorkloadSigner, sas_resource

KEY = b"\x07" * 32


@pytest.fixture
async def server(tmp_path: Path, stack_ca: StackCA) -> AsyncIterator[WorkloadServer]:
    signer = WorkloadSigner("hub.local", "dev1")
    signer.set_credential(ModuleCredential("m1", "gen-1", KEY))
    signer.set_credential(ModuleCredential("m2", "gen-2", b"\x08" * 32))
    srv = WorkloadServer(signer, stack_ca.ca_pem, workload_socket_dir(tmp_path))
    await srv.add_module("m1")
    await srv.add_module("m2")
    yield srv
    await srv.close()


def sign_in_thread(hsm: IoTEdgeHsm, data: str) -> str:
    return str(hsm.sign(data))


async def test_sdk_hsm_gets_trust_bundle_and_signature(server: WorkloadServer, stack_ca: StackCA) -> None:
    hsm = IoTEdgeHsm("m1", "gen-1", server.workload_uri("m1"), "2019-01-30")
    assert await asyncio.to_thread(hsm.get_certificate) == stack_ca.ca_pem
    sts = f"{sas_resource('hub.local', 'dev1', 'm1')}\n{int(time.time()) + 3600}"
    digest = await asyncio.to_thread(sign_in_thread, hsm, sts)
    assert digest == base64.b64encode(hmac.new(KEY, sts.encode(), hashlib.sha256).digest()).decode()
    path = server.socket_path("m1")
    assert (path.stat().st_mode & 0o777) == 0o600 and (path.parent.stat().st_mode & 0o777) == 0o700


async def test_module_cannot_sign_through_another_modules_socket(server: WorkloadServer) -> None:
    # m2's client pointed at m1's socket: refused, and m1 keeps working.
    hsm = IoTEdgeHsm("m2", "gen-2", server.workload_uri("m1"), "2019-01-30")
    sts = f"{sas_resource('hub.local', 'dev1', 'm2')}\n{int(time.time()) + 3600}"
    with pytest.raises(IoTEdgeError):
        await asyncio.to_thread(sign_in_thread, hsm, sts)
    ok = IoTEdgeHsm("m1", "gen-1", server.workload_uri("m1"), "2019-01-30")
    own = f"{sas_resource('hub.local', 'dev1', 'm1')}\n{int(time.time()) + 3600}"
    assert await asyncio.to_thread(sign_in_thread, ok, own)


def _post(uri: str, path: str, body: bytes, params: dict[str, str] | None = None) -> requests.Response:
    base = "http+unix://" + quote(uri[len("unix://"):], safe="")
    return requests.post(base + path, params=params if params is not None else {"api-version": "2019-01-30"},
                         data=body, timeout=10)


@pytest.mark.parametrize(("path", "body", "params", "status", "code"), [
    ("/modules/m2/genid/gen-2/sign", b'{"keyId":"primary","algo":"HMACSHA256","data":"eA=="}', None, 403,
     "LOCAL_WORKLOAD_WRONG_MODULE"),
    ("/modules/m1/genid/gen-0/sign", b'{"keyId":"primary","algo":"HMACSHA256","data":"eA=="}', None, 403,
     "LOCAL_WORKLOAD_GENERATION_MISMATCH"),
    ("/modules/m1/genid/gen-1/sign", b'{"keyId":"primary","algo":"HMACSHA256","data":"eA=="}', None, 403,
     "LOCAL_WORKLOAD_SIGN_REFUSED"),
    ("/modules/m1/genid/gen-1/sign", b"{not json", None, 400, "LOCAL_WORKLOAD_BAD_REQUEST"),
    ("/modules/m1/genid/gen-1/sign", b'{"keyId":"primary"}', {}, 400, "LOCAL_WORKLOAD_BAD_REQUEST"),
    ("/modules/m1/genid/gen-1/sign", b"x" * 20000, None, 413, None),
])
async def test_hostile_requests_get_typed_refusals(server: WorkloadServer, path: str, body: bytes,
                                                   params: dict[str, str] | None, status: int,
                                                   code: str | None) -> None:
    response = await asyncio.to_thread(_post, server.workload_uri("m1"), path, body, params)
    assert response.status_code == status
    if code is not None:
        assert response.json() == {"error": {"code": code, "message": response.json()["error"]["message"]}}
        assert KEY.hex() not in response.text


def test_socket_dir_is_short_enough_and_refuses_foreign_dirs(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 80) / "state"
    chosen = workload_socket_dir(deep)
    assert len(str(chosen)) + len("/a-module-name-of-forty-characters-xxxxx.sock") < 108
    assert chosen == workload_socket_dir(deep)  # stable across restarts
    link = tmp_path / "link"
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.symlink(target, link)
    with pytest.raises(WorkloadError) as err:
        prepare_socket_dir(link)
    assert err.value.code == "LOCAL_WORKLOAD_SOCKET_DIR"



async def test_peers_outside_the_allowed_uids_are_refused(tmp_path: Path, stack_ca: StackCA) -> None:
    # SO_PEERCRED is checked on every request, on top of the 0700/0600 file modes: a server that
    # serves only some other uid refuses us with a typed error and signs nothing.
    signer = WorkloadSigner("hub.local", "dev1")
    signer.set_credential(ModuleCredential("m1", "gen-1", KEY))
    srv = WorkloadServer(signer, stack_ca.ca_pem, workload_socket_dir(tmp_path / "other"),
                         allowed_uids=frozenset({os.getuid() + 1}))
    try:
        uri = await srv.add_module("m1")
        sts = f"{sas_resource('hub.local', 'dev1', 'm1')}\n{int(time.time()) + 3600}"
        body = json.dumps({"keyId": "primary", "algo": "HMACSHA256", "data": base64.b64encode(sts.encode()).decode()})
        response = await asyncio.to_thread(_post, uri, "/modules/m1/genid/gen-1/sign", body.encode())
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "LOCAL_WORKLOAD_PEER_REFUSED"
        assert "digest" not in response.text
    finally:
        await srv.close()
