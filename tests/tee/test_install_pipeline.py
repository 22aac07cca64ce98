"""The installer's install job (package_installer.pipeline.run_install) against the real TEE service:
a package installs and serves whatever its chunk size, and a tampered payload (with a twin that
declares the tampered file's sha256) is refused with CPK_DIGEST_MISMATCH by the TEE's begin_install,
before any key release; the serving version is untouched."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tee_helpers import DEVICE, Device, Package, Publisher, install, mlp_model, reference, release_key

from edb import onnx_layout
from edb.cpk import DEFAULT_CHUNK_SIZE, PackageIdentity, Target, build
from edb.errors import EdbError
from edb.schemas import DesiredPackage, PackageState
from edb.tee import TeeClient
from package_installer.downloader import DownloadSettings
from package_installer.pipeline import InstallDeps, run_install


class KeyReleaseStandIn:
    """The key release decision (tee_helpers.release_key) behind the client's interface; counts calls."""

    def __init__(self, packages: dict[str, Package], publisher: Publisher, device: Device) -> None:
        self.packages, self.publisher, self.device = packages, publisher, device
        self.calls = 0

    def release(self, package: tuple[str, str], signed_manifest: Any, make_evidence: Callable[[str], Any]) -> str:
        self.calls += 1
        evidence = make_evidence(f"nonce-{self.calls}")
        return release_key(evidence, self.packages[package[1]], self.publisher, self.device.manufacturer_ca)


def build_package(publisher: Publisher, directory: Path, version: str, svn: int, chunk_size: int) -> Package:
    model = mlp_model(dim=600, seed=svn)  # ~2.9 MB aligned: three 1 MiB chunks, 44 of 64 KiB
    payload = onnx_layout.convert(model)
    now = dt.datetime.now(dt.UTC)
    ident = PackageIdentity(package_id="mlp", version=version, security_version=svn,
                            target=Target(device_ids=(DEVICE,)), created=now - dt.timedelta(minutes=5),
                            expires=now + dt.timedelta(days=1), media_type=onnx_layout.MEDIA_TYPE)
    out = directory / f"mlp-{version}-{chunk_size}.cpk"
    result = build(io.BytesIO(payload), out, identity=ident, kek=publisher.kek, signer=publisher.signer,
                   chunk_size=chunk_size)
    return Package(out, result, model, payload)


def desired_for(path: Path, version: str) -> DesiredPackage:
    data = path.read_bytes()
    return DesiredPackage("mlp", version, f"file://{path}", hashlib.sha256(data).hexdigest(), len(data))


def tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[16 + 4 * 16 + 2 * 1024 * 1024 + 100] ^= 0x01  # in the payload, past the first two MiB
    path.write_bytes(bytes(data))


@pytest.fixture
def setup(client: TeeClient, publisher: Publisher, device: Device, tmp_path: Path):  # type: ignore[no-untyped-def]
    drop = tmp_path / "drop"
    drop.mkdir()
    v1 = build_package(publisher, drop, "1.0.0", 1, DEFAULT_CHUNK_SIZE)
    install(client, v1, publisher, device)  # serving version
    packages = {"1.0.0": v1}
    key_release = KeyReleaseStandIn(packages, publisher, device)
    deps = InstallDeps(client, key_release, DownloadSettings(cache_dir=tmp_path / "cache", allowed_dirs=(drop,)))
    return drop, packages, key_release, deps


async def run(deps: InstallDeps, desired: DesiredPackage) -> tuple[Any, list[PackageState]]:
    states: list[PackageState] = []

    async def on_state(state: PackageState, svn: int | None) -> None:
        states.append(state)

    return await run_install(desired, deps, on_state), states


@pytest.mark.parametrize("chunk_size", [DEFAULT_CHUNK_SIZE, 64 * 1024], ids=["1MiB", "64KiB"])
async def test_install_job_installs_and_the_new_version_serves(
        setup, client: TeeClient, publisher: Publisher, chunk_size: int) -> None:  # type: ignore[no-untyped-def]
    drop, packages, key_release, deps = setup
    v2 = packages["2.0.0"] = build_package(publisher, drop, "2.0.0", 2, chunk_size)
    summary, states = await run(deps, desired_for(v2.path, "2.0.0"))
    assert summary.package.version == "2.0.0" and summary.replaced_version == "1.0.0"
    assert states == [PackageState.DOWNLOADING, PackageState.VERIFYING, PackageState.RELEASING,
                      PackageState.INSTALLING]
    assert key_release.calls == 1
    h = client.load_model("mlp")
    x = np.ones((2, 600), np.float32)
    np.testing.assert_allclose(client.infer(h, {"input": x})["output"], reference(v2.model, x), rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("chunk_size", [DEFAULT_CHUNK_SIZE, 64 * 1024], ids=["1MiB", "64KiB"])
async def test_tampered_payload_is_refused_before_any_key_release(
        setup, client: TeeClient, publisher: Publisher, chunk_size: int) -> None:  # type: ignore[no-untyped-def]
    drop, packages, key_release, deps = setup
    v2 = packages["2.0.0"] = build_package(publisher, drop, "2.0.0", 2, chunk_size)
    tamper(v2.path)  # the attacker also controls the twin: the declared sha256 is the tampered file's
    with pytest.raises(EdbError) as err:
        await run(deps, desired_for(v2.path, "2.0.0"))
    assert err.value.code == "CPK_DIGEST_MISMATCH"
    assert key_release.calls == 0  # refused before any key was asked for
    assert client.status()["installs"] == 0  # the TEE transaction was aborted
    assert [(p.name, p.version) for p in client.list_installed()] == [("mlp", "1.0.0")]
    assert v2.path.exists()  # a file: package is never removed by the installer
