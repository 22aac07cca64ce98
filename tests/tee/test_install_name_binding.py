"""The name a model is installed (and served) under is bound, in the TEE, to the package's signed id.

A compromised installer holds the installer role and so can hand the TEE any authentic package.
What it must not do is install one authentic model under the name the runner serves another one
by: the installer module's own INSTALL_NAME_MISMATCH check lives in the normal world, so here the
raw TEE client (the real ``TeeClient`` with the installer role, no module in between) tries it.
"""

from __future__ import annotations

import numpy as np
import pytest
from tee_helpers import Device, Publisher, install, mlp_model, reference

from edb.errors import EdbError
from edb.tee import TeeClient
from edb_tee.install import check_name_binding


def test_check_name_binding_is_exact() -> None:
    check_name_binding("mlp", "mlp")
    for name, signed in (("mlp", "other"), ("mlp", "MLP"), ("mlp", "mlp "), ("mlp-b", "mlp")):
        with pytest.raises(EdbError) as err:
            check_name_binding(name, signed)
        assert err.value.code == "TEE_NAME_MISMATCH"


def test_raw_installer_cannot_install_another_authentic_package_under_a_served_name(
        client: TeeClient, make_package, publisher: Publisher, device: Device) -> None:
    served_model, other_model = mlp_model(seed=1), mlp_model(seed=9)
    served = make_package(served_model, package_id="mlp", version="1.0.0")
    other = make_package(other_model, package_id="other", version="7.0.0", security_version=5)
    install(client, served, publisher, device, name="mlp")
    handle = client.load_model("mlp")

    # every authentic package, a higher version and security version too, is refused under the
    # served name before any key is asked for (begin answers; there is no transaction to complete)
    with pytest.raises(EdbError) as err:
        client.begin_install("mlp", other.path)
    assert err.value.code == "TEE_NAME_MISMATCH"
    # ... and so is the served package under a name of the attacker's choosing
    with pytest.raises(EdbError) as err:
        client.begin_install("other", served.path)
    assert err.value.code == "TEE_NAME_MISMATCH"

    # nothing changed: the same record, the same model serves under the name
    assert [(p.name, p.package_id, p.version) for p in client.list_installed()] == [("mlp", "mlp", "1.0.0")]
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(client.infer(handle, {"input": x})["output"], reference(served_model, x), rtol=1e-5)
    fresh = client.load_model("mlp")
    assert fresh.package_id == "mlp"
    np.testing.assert_allclose(client.infer(fresh, {"input": x})["output"], reference(served_model, x), rtol=1e-5)

    # the other package installs normally under its own name
    install(client, other, publisher, device, name="other")
    assert sorted(p.name for p in client.list_installed()) == ["mlp", "other"]
