"""NaN and Infinity are not JSON (RFC 8259) and IoT Hub refuses them; the stand-in must too, with a
400 and a code, and store nothing (issue 13 item 9). Real SDKs: azure-iot-hub and azure-iot-device."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from azure.iot.device.exceptions import ClientError
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import Twin, TwinProperties
from msrest.exceptions import HttpOperationError

pytestmark = pytest.mark.timeout(60)

NON_FINITE = [{"x": math.nan}, {"x": math.inf}, {"model": {"threshold": -math.inf}}, {"list": [1.0, math.nan]}]


def refused_400(call: Callable[[], Any]) -> str:
    with pytest.raises(HttpOperationError) as err:
        call()
    assert err.value.response.status_code == 400
    return str(json.loads(err.value.response.text)["error"]["code"])


@pytest.mark.parametrize("desired", NON_FINITE)
def test_desired_nan_and_infinity_refused(registry: IoTHubRegistryManager, make_module: Callable[..., str],
                                          desired: dict[str, Any]) -> None:
    make_module("dev-nan", "installer")
    before = registry.get_module_twin("dev-nan", "installer")
    twin = Twin(properties=TwinProperties(desired=desired))
    assert refused_400(lambda: registry.update_module_twin("dev-nan", "installer", twin, before.etag)) \
        == "HUB_BAD_REQUEST"
    assert refused_400(lambda: registry.replace_module_twin("dev-nan", "installer", twin, before.etag)) \
        == "HUB_BAD_REQUEST"
    assert refused_400(lambda: registry.update_twin("dev-nan", twin, "*")) == "HUB_BAD_REQUEST"
    after = registry.get_module_twin("dev-nan", "installer")
    assert after.properties.desired == before.properties.desired and after.etag == before.etag
    assert registry.update_module_twin(  # the twin still takes finite numbers
        "dev-nan", "installer", Twin(properties=TwinProperties(desired={"x": 1.5})), after.etag
    ).properties.desired["x"] == 1.5


async def test_reported_nan_refused(registry: IoTHubRegistryManager, make_module: Callable[..., str],
                                   module_clients: Callable[..., Any]) -> None:
    key = make_module("dev-nan-r", "runner")
    client = await module_clients("dev-nan-r", "runner", key)
    with pytest.raises(ClientError):
        await client.patch_twin_reported_properties({"latency": math.nan})
    await client.patch_twin_reported_properties({"latency": 2.5})
    reported = registry.get_module_twin("dev-nan-r", "runner").properties.reported
    assert reported["latency"] == 2.5 and reported["$version"] == 2


def test_validation_refuses_non_finite_built_in_process() -> None:
    """Paths that build documents in process (deployments, the orchestrator's layering) validate too."""
    from edb_local.hub.errors import HubError
    from edb_local.hub.twin import validate_section

    for doc in NON_FINITE:
        with pytest.raises(HubError) as exc:
            validate_section(doc, what="desired", limit=32 * 1024, allow_null=True)
        assert exc.value.code == "HUB_TWIN_INVALID"
