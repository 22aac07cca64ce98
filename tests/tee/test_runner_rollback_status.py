"""The runner's reported model status after a phase is rolled back (found with the fleet simulator).

Sequence of a breached progressive rollout on one device: 1.0.0 serves; 2.0.0 is installed and fails
to load (the fleet simulator's own fault injection, ``FaultyTee``, at the TEE client boundary); the
installer reinstalls 1.0.0, which the runner keeps serving. The reported ``model`` must say
``serving 1.0.0`` throughout, the failure of 2.0.0 staying visible in ``model.lastLoadFailure``.

Reproduced first: after the reinstall the runner kept reporting ``state: failed`` (left from the
2.0.0 attempt), since the reinstalled version was the one already serving and nothing recomputed
the report. ``RunnerService`` runs against the real TEE service through the real ``TeeClient``;
only the IoT Edge module client is a recorder.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from tee_helpers import Device, Publisher, install
from test_string_tensors_runner import Frame, Recorder

from edb.tee import TeeClient
from edb_local.fleet.device_host import FaultyTee
from edb_local.fleet.spec import Faults, SimDevice
from inference_runner.service import RunnerService

pytestmark = pytest.mark.timeout(120)


class Reporting(Recorder):
    """A recorder that keeps the reported patches (what the hub's twin would hold)."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.reported: dict[str, Any] = {}

    async def patch_twin_reported_properties(self, patch: dict[str, Any]) -> None:
        self.reported.update(json.loads(json.dumps(patch)))


async def test_a_rolled_back_version_is_reported_serving_with_the_failure_kept_apart(
        client: TeeClient, make_package: Any, publisher: Publisher, device: Device) -> None:
    sim = SimDevice("d", str(device.state_dir), {}, Faults(fail_load="2.0.0"))
    recorder = Reporting("mlp")
    service = RunnerService(recorder, FaultyTee(client, sim))
    await service.load_twin()
    v1, v2 = make_package(version="1.0.0"), make_package(version="2.0.0")

    install(client, v1, publisher, device)
    await service.select()
    model = service.reported_patch()["model"]
    assert (model["state"], model["version"], model["lastLoadFailure"]) == ("serving", "1.0.0", None)

    install(client, v2, publisher, device)  # the phase's new version: it does not load on this device
    await service.select()
    model = service.reported_patch()["model"]
    assert (model["name"], model["state"], model["version"], model["error"]) == ("mlp", "serving", "1.0.0", None)
    failure = model["lastLoadFailure"]
    assert (failure["name"], failure["version"], failure["error"]["code"]) == ("mlp", "2.0.0", "TEE_MODEL_INVALID")

    install(client, v1, publisher, device)  # the breach rolls the phase back: 1.0.0 again
    await service.select()
    model = service.reported_patch()["model"]
    assert (model["state"], model["version"], model["error"]) == ("serving", "1.0.0", None), model
    assert model["lastLoadFailure"]["version"] == "2.0.0"  # history for the operator, not the status

    # and it is what actually answers
    await service.on_message(Frame("after", json.dumps({"input": [[0.5] * 64]}).encode()))
    await service.serve_guarded(service.batcher.take())
    answer = recorder.results()["after"]
    assert answer["error"] is None and answer["model"]["version"] == "1.0.0"
