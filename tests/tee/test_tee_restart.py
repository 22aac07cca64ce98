"""A restart of the TEE service: installed models reload from sealed storage (no key release),
clients reconnect, handles from before the restart are recovered or refused as stale."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from tee_helpers import START_BOUND_S, Device, Publisher, TeeProcess, install, mlp_model, reference, wait_until

from edb.errors import EdbError
from edb.tee import AsyncTeeClient
from edb.tee.commands import RUNNER_TA, RunnerCmd
from edb.tee.protocol import Value


def test_restart_reloads_from_sealed_storage_and_clients_reconnect(
        tee: TeeProcess, make_package, publisher: Publisher, device: Device) -> None:
    client = tee.client()
    pkg = make_package(security_version=4)
    install(client, pkg, publisher, device)
    h = client.load_model("mlp")
    x = np.random.default_rng(3).standard_normal((4, 64), dtype=np.float32)
    before = client.infer(h, {"input": x})["output"]
    boot = client.status()["bootId"]
    tee.restart()
    # same handle object: the client reconnects and reloads the model by name (same version)
    after = client.infer(h, {"input": x})["output"]
    np.testing.assert_array_equal(before, after)
    np.testing.assert_allclose(after, reference(pkg.model, x), rtol=1e-5)
    assert client.status()["bootId"] != boot
    [p] = client.list_installed()
    assert (p.version, p.security_version) == ("1.0.0", 4)
    client.close()


def test_stale_handle_after_restart_with_a_new_version(
        tee: TeeProcess, make_package, publisher: Publisher, device: Device) -> None:
    runner, installer = tee.client(), tee.client()
    install(installer, make_package(mlp_model(seed=1), version="1.0.0"), publisher, device)
    h = runner.load_model("mlp")
    install(installer, make_package(mlp_model(seed=2), version="2.0.0", security_version=2), publisher, device)
    tee.restart()
    with pytest.raises(EdbError) as err:
        runner.infer(h, {"input": np.ones((1, 64), np.float32)})
    assert err.value.code == "TEE_HANDLE_STALE"
    assert runner.load_model("mlp").version == "2.0.0"
    runner.close()
    installer.close()


def test_handles_die_with_their_process(tee: TeeProcess, make_package, publisher: Publisher,
                                        device: Device) -> None:
    client = tee.client()
    install(client, make_package(), publisher, device)
    script = (
        "import sys; from edb.tee import TeeClient\n"
        "c = TeeClient(sys.argv[1]); h = c.load_model('mlp'); print(h.handle, flush=True); sys.stdin.read()\n"
    )
    other = subprocess.Popen([sys.executable, "-c", script, str(device.socket)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    handle = int(other.stdout.readline())  # type: ignore[union-attr]
    assert client.status()["models"]["loaded"][0]["handles"] == 1
    # another process cannot use or unload it
    with pytest.raises(EdbError) as err:
        client._invoke(RUNNER_TA, RunnerCmd.UNLOAD, [Value(handle)])
    assert err.value.code == "TEE_UNKNOWN_HANDLE"
    other.communicate("", timeout=START_BOUND_S)  # the owner exits: its handles are released, buffers wiped
    # the service notices the closed connection on its own thread: wait for that event
    wait_until(lambda: client.status()["models"]["loaded"] == [], "the exited owner's handles are released")
    client.close()


async def test_async_client_infers_while_another_version_loads(
        tee: TeeProcess, make_package, publisher: Publisher, device: Device) -> None:
    import asyncio

    async with AsyncTeeClient(device.socket) as tee_async:
        v1 = make_package(mlp_model(seed=1), version="1.0.0")
        await asyncio.to_thread(install, tee_async.sync, v1, publisher, device)
        h1 = await tee_async.load_model("mlp")
        v2 = make_package(mlp_model(dim=64, layers=2, seed=5), version="2.0.0", security_version=2)
        x = np.ones((1, 64), np.float32)

        async def serve() -> int:
            n = 0
            for _ in range(50):
                out = await tee_async.infer(h1, {"input": x})
                np.testing.assert_allclose(out["output"], reference(v1.model, x), rtol=1e-5)
                n += 1
            return n

        served, _ = await asyncio.gather(serve(), asyncio.to_thread(install, tee_async.sync, v2, publisher, device))
        assert served == 50
        h2 = await tee_async.load_model("mlp")
        assert h2.version == "2.0.0"
        await tee_async.unload(h1)
        assert [m["version"] for m in (await tee_async.status())["models"]["loaded"]] == ["2.0.0"]
