"""End to end with the real TEE-simulated region (edb_tee, a child process): a device provisioned by
the simulated manufacturer CA makes the evidence, the key release service (real HTTPS, Key Vault
stand-in KEK, policy pinning the TEE's own measurement) releases the DEK to the TEE's one-time key,
and the TEE installs and runs the model. Then the same device is refused once the version is revoked."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from kr_helpers import Publisher, unique
from onnx import TensorProto, helper

from edb.cpk import PackageIdentity, Target, build
from edb.keyrelease import KeyReleaseClient, PackageRef, ReleaseFailed
from edb.keys.azure_keyvault import KeyVaultKek
from edb.tee import TeeClient
from edb_local.stack_ca import StackCA
from edb_tee.provisioning import provision
from key_release_service import codes
from key_release_service.host import KeyReleaseHost
from key_release_service.service import KeyReleaseService

DEVICE_CLASS = "trustbox-edge-201"


def relu_model() -> bytes:
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "relu",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


@pytest.fixture
def tee_device(tmp_path: Path, publisher: Publisher) -> Iterator[tuple[Any, TeeClient]]:
    result = provision(tmp_path / "state", unique("tee-dev"), device_class=DEVICE_CLASS,
                       publisher_roots=[publisher.root])
    log = tmp_path / "tee.log"
    with log.open("ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "edb_tee", "serve", "--device-dir", str(result.layout.root)],
                                stdout=fh, stderr=fh)
    deadline = time.monotonic() + 30
    while not result.layout.socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"TEE did not start: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    client = TeeClient(result.layout.socket)
    try:
        yield result, client
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_release_to_the_real_tee(tee_device: tuple[Any, TeeClient], make_service: Callable[..., Any],
                                       kek: KeyVaultKek, publisher: Publisher, set_policy: Callable[..., Any],
                                       stack_ca: StackCA, loopback_address: str, tmp_path: Path) -> None:
    provisioned, tee = tee_device
    info = tee.device_info()
    assert info.device_id == provisioned.device_id and info.device_class == DEVICE_CLASS
    pid = unique("model")
    set_policy(pid, device_classes=[DEVICE_CLASS], measurements=[info.measurement], min_tee_svn=info.tee_svn)
    now = dt.datetime.now(dt.UTC)
    package_path = tmp_path / "model.cpk"
    build(io.BytesIO(relu_model()), package_path, kek=kek, signer=publisher.signer, chunk_size=4096,
          identity=PackageIdentity(package_id=pid, version="1.0.0", security_version=1,
                                   target=Target(device_classes=(DEVICE_CLASS,)), media_type="application/onnx",
                                   created=now - dt.timedelta(minutes=1), expires=now + dt.timedelta(days=1)))

    manufacturer_root = x509.load_pem_x509_certificate(provisioned.manufacturer_ca.read_bytes())
    service: KeyReleaseService = make_service(manufacturer_roots=(manufacturer_root,))
    creds = stack_ca.issue_server(f"kr-tee-{loopback_address}", ips=[loopback_address])
    host = KeyReleaseHost(service, address=loopback_address, port=0, cert=creds.cert_path, key=creds.key_path)
    await host.start()
    try:
        client = KeyReleaseClient(host.url, ca_bundle=str(stack_ca.ca_path))

        def install() -> Any:
            ticket = tee.begin_install(pid, package_path)  # installed under its signed id
            assert ticket.signed_manifest is not None
            try:
                jwe = client.release(PackageRef(ticket.package_id, ticket.version), ticket.signed_manifest,
                                     lambda nonce: tee.get_install_evidence(ticket, nonce))
            except ReleaseFailed:
                tee.abort_install(ticket)  # as the installer does: nothing half-installed stays behind
                raise
            return tee.complete_install(ticket, jwe)

        summary = await asyncio.to_thread(install)
        assert summary.package.package_id == pid and summary.package.version == "1.0.0"
        handle = await asyncio.to_thread(tee.load_model, pid)
        x = np.array([[-1.0, 2.0, -3.0, 4.0]], dtype=np.float32)
        out = await asyncio.to_thread(tee.infer, handle, {"input": x})
        assert np.array_equal(out["output"], np.maximum(x, 0))

        # revoke the version: the same genuine device is refused, with the code surfaced to the caller
        set_policy(pid, device_classes=[DEVICE_CLASS], measurements=[info.measurement], revoked_versions=["1.0.0"])
        with pytest.raises(ReleaseFailed) as exc:
            await asyncio.to_thread(install)
        assert exc.value.code == codes.PACKAGE_REVOKED and not exc.value.retryable
    finally:
        await host.stop()
