"""Direct methods of the modules (status, uninstall, retry, flush) and binary (.npy) inputs, end to end."""

from __future__ import annotations

from e2e_stack import DEVICE, INSTALLER, NAME, RUNNER, E2EStack, wait_for

from edb.schemas import PackageState


def test_direct_methods_and_npy_inputs(e2e: E2EStack) -> None:
    status, payload = e2e.hub.invoke_module_method(DEVICE, INSTALLER, "status", {})
    assert status == 200 and payload["packages"][NAME]["state"] == "installed"
    assert payload["installed"] == {NAME: {"version": "1.0.0", "securityVersion": 1}}

    # binary tensors: the sensor switches to .npy bodies (label as an application property)
    e2e.upstream()
    mark = e2e.events[-1].seq if e2e.events else 0
    e2e.hub.patch_module_desired(DEVICE, "simulated_sensor", {"format": "npy", "rowsPerMessage": 2})

    def npy_answers() -> bool:
        windows = [e for e in e2e.upstream() if e.seq > mark + 3 and e.application.get("messageType") == "metrics"]
        return any(w.payload["inference"]["count"] > 0 and w.payload["inference"]["errors"] == 0
                   and (w.payload["inference"]["accuracy"] or 0) > 0.8 for w in windows)

    wait_for("answers to .npy inputs", npy_answers, 30)

    # uninstall: the package leaves the TEE, the runner stops serving it, the twin says why
    status, payload = e2e.hub.invoke_module_method(DEVICE, INSTALLER, "uninstall", {"name": NAME})
    assert status == 200, payload
    assert e2e.tee_installed() == []
    e2e.wait_state("1.0.0", PackageState.FAILED, code="INSTALL_REMOVED_BY_METHOD")
    wait_for("the runner to stop serving", lambda: e2e.serving() is None, 30)
    status, payload = e2e.hub.invoke_module_method(DEVICE, INSTALLER, "uninstall", {"name": "../x"})
    assert status == 400 and payload["error"]["code"] == "INSTALL_INVALID_NAME"

    # retry: the desired version comes back
    status, payload = e2e.hub.invoke_module_method(DEVICE, INSTALLER, "retry", {"name": NAME})
    assert status == 200 and payload == {"retried": [NAME]}
    e2e.wait_state("1.0.0", PackageState.INSTALLED)
    e2e.wait_serving("1.0.0")

    status, payload = e2e.hub.invoke_module_method(DEVICE, RUNNER, "status", {})
    assert status == 200 and payload["model"]["version"] == "1.0.0"
    status, payload = e2e.hub.invoke_module_method(DEVICE, "telemetry_reporter", "flush", {})
    assert status == 200 and payload == {"flushRequested": True}
    status, payload = e2e.hub.invoke_module_method(DEVICE, INSTALLER, "format-disk", {})
    assert status == 404 and payload["error"]["code"] == "INSTALL_UNKNOWN_METHOD"
