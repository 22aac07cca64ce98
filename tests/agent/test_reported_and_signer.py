"""Reported properties (pure) and the workload API's signing decisions (pure)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import time
from typing import Any

import pytest

from edb_local.agent.reported import (
    DesiredStatus,
    ModuleReport,
    agent_reported,
    apply_patch,
    reported_patch,
)
from edb_local.workload.errors import WorkloadError
from edb_local.workload.signer import MAX_TOKEN_LIFETIME_S, ModuleCredential, WorkloadSigner, sas_resource

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def report(status: str = "running", exit_code: int | None = None) -> ModuleReport:
    return ModuleReport(status, "running", "1.0", "always", "reg/app:1", exit_code=exit_code, last_start=T0)


def doc(modules: dict[str, ModuleReport], code: int = 200, version: int | None = 4) -> dict[str, Any]:
    return agent_reported(desired_status=DesiredStatus(code), last_desired_version=version, modules=modules,
                          agent_started=T0, agent_version="0.1.0", hub_connected=True)


def test_agent_reported_shape() -> None:
    d = doc({"app": report()})
    assert d["lastDesiredVersion"] == 4 and d["lastDesiredStatus"] == {"code": 200, "description": ""}
    assert d["modules"]["app"]["runtimeStatus"] == "running"
    assert d["modules"]["app"]["lastStartTimeUtc"] == "2026-11-26T12:00:00.000000Z"
    assert d["modules"]["app"]["lastExitTimeUtc"] == "0001-01-01T00:00:00Z"
    assert "exitCode" not in d["modules"]["app"]
    assert d["systemModules"]["edgeHub"]["runtimeStatus"] == "running"


def test_reported_patch_is_minimal_and_nulls_removed_modules() -> None:
    before = doc({"a": report(), "b": report()})
    after = doc({"a": report("failed", exit_code=3)}, version=5)
    patch = reported_patch(before, after)
    assert patch == {"lastDesiredVersion": 5, "modules": {"b": None, "a": {"runtimeStatus": "failed", "exitCode": 3}}}
    assert apply_patch(before, patch) == after
    assert reported_patch(after, after) == {}
    again = doc({"a": report()})
    assert reported_patch(after, again)["modules"]["a"]["exitCode"] is None


HUB, DEVICE = "hub.local", "dev1"


def signer() -> WorkloadSigner:
    s = WorkloadSigner(HUB, DEVICE)
    s.set_credential(ModuleCredential.from_base64("m1", "gen1", base64.b64encode(b"k" * 32).decode()))
    s.set_credential(ModuleCredential.from_base64("m2", "gen2", base64.b64encode(b"j" * 32).decode()))
    return s


def body(text: str, **over: Any) -> dict[str, Any]:
    return {"keyId": "primary", "algo": "HMACSHA256", "data": base64.b64encode(text.encode()).decode(), **over}


def test_signs_the_modules_own_sas_string() -> None:
    now = time.time()
    sts = f"{sas_resource(HUB, DEVICE, 'm1')}\n{int(now) + 3600}"
    digest = signer().sign(caller="m1", module_id="m1", generation_id="gen1", body=body(sts), now=now)
    assert digest == base64.b64encode(hmac.new(b"k" * 32, sts.encode(), hashlib.sha256).digest()).decode()
    assert "k" * 32 not in repr(ModuleCredential("m", "g", b"k" * 32))


@pytest.mark.parametrize(("caller", "module", "genid", "make_body", "code"), [
    ("m1", "m2", "gen2", lambda n: body(f"{sas_resource(HUB, DEVICE, 'm2')}\n{n + 60}"), "LOCAL_WORKLOAD_WRONG_MODULE"),
    ("m3", "m3", "gen3", lambda n: body(f"{sas_resource(HUB, DEVICE, 'm3')}\n{n + 60}"),
     "LOCAL_WORKLOAD_UNKNOWN_MODULE"),
    ("m1", "m1", "stale", lambda n: body(f"{sas_resource(HUB, DEVICE, 'm1')}\n{n + 60}"),
     "LOCAL_WORKLOAD_GENERATION_MISMATCH"),
    ("m1", "m1", "gen1", lambda n: body(f"{sas_resource(HUB, DEVICE, 'm2')}\n{n + 60}"), "LOCAL_WORKLOAD_SIGN_REFUSED"),
    ("m1", "m1", "gen1", lambda n: body(f"{sas_resource('evil', DEVICE, 'm1')}\n{n + 60}"),
     "LOCAL_WORKLOAD_SIGN_REFUSED"),
    ("m1", "m1", "gen1", lambda n: body("arbitrary data"), "LOCAL_WORKLOAD_SIGN_REFUSED"),
    ("m1", "m1", "gen1", lambda n: body(f"{sas_resource(HUB, DEVICE, 'm1')}\n{n - 1}"), "LOCAL_WORKLOAD_SIGN_REFUSED"),
    ("m1", "m1", "gen1", lambda n: body(f"{sas_resource(HUB, DEVICE, 'm1')}\n{n + MAX_TOKEN_LIFETIME_S + 60}"),
     "LOCAL_WORKLOAD_SIGN_REFUSED"),
    ("m1", "m1", "gen1", lambda n: body(f"{sas_resource(HUB, DEVICE, 'm1')}\n{n + 60}", keyId="secondary"),
     "LOCAL_WORKLOAD_BAD_REQUEST"),
    ("m1", "m1", "gen1", lambda n: body(f"{sas_resource(HUB, DEVICE, 'm1')}\n{n + 60}", algo="HMACSHA1"),
     "LOCAL_WORKLOAD_BAD_REQUEST"),
    ("m1", "m1", "gen1", lambda n: {"keyId": "primary", "algo": "HMACSHA256", "data": "!!!"},
     "LOCAL_WORKLOAD_BAD_REQUEST"),
    ("m1", "m1", "gen1", lambda n: ["not", "an", "object"], "LOCAL_WORKLOAD_BAD_REQUEST"),
])
def test_hostile_sign_requests_are_refused(caller: str, module: str, genid: str, make_body: Any, code: str) -> None:
    now = int(time.time())
    with pytest.raises(WorkloadError) as err:
        signer().sign(caller=caller, module_id=module, generation_id=genid, body=make_body(now), now=now)
    assert err.value.code == code
