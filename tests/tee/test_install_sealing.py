"""Sealing a model while it is decrypted (edb_tee.storage.ObjectWriter behind the decryption): the
object written piece by piece is the same sealed object, an unfinished one never becomes current
and leaves no file, and a model installed this way reloads after a restart without key release."""

from __future__ import annotations

import datetime as dt
import io
import random
from pathlib import Path

import numpy as np
import pytest
from tee_helpers import (
    DEVICE,
    Device,
    Package,
    Publisher,
    TeeProcess,
    install,
    mlp_model,
    reference,
    wait_until,
)

from edb import onnx_layout
from edb.cpk import DEFAULT_CHUNK_SIZE, PackageIdentity, Target, build
from edb.errors import EdbError
from edb.tee.commands import INSTALLER_TA
from edb_tee import sealed
from edb_tee.keys import KeyHierarchy, new_huk
from edb_tee.rpmb import ReplayProtectedStore
from edb_tee.storage import SecureStorage

MIB = 1024 * 1024


def make_storage(root: Path) -> SecureStorage:
    keys = KeyHierarchy(new_huk(), "dev-1")
    root.mkdir(parents=True, exist_ok=True)
    rpmb = ReplayProtectedStore.create(root / "rpmb.json", keys.rpmb_key)
    return SecureStorage(root / "objects", keys, rpmb)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sealing_behind_a_growing_watermark_gives_the_same_object(tmp_path: Path, seed: int) -> None:
    st = make_storage(tmp_path)
    data = np.random.default_rng(seed).bytes(3 * MIB + 12345)
    buf = bytearray(len(data))
    view = memoryview(buf)
    rng = random.Random(seed)
    with st.writer(INSTALLER_TA, "model/a", len(data)) as writer:
        ready = 0
        while ready < len(data):  # the plaintext arrives in pieces of any size, sealing follows
            step = min(len(data) - ready, rng.choice([1, 4096, 65536, MIB - 1, MIB, 2 * MIB]))
            view[ready:ready + step] = data[ready:ready + step]
            ready += step
            writer.advance(view, ready)
        gen = writer.commit(also=lambda s: s.floors.__setitem__("a", 7))
    assert gen == 1 and st.read(INSTALLER_TA, "model/a") == data
    assert st.rpmb.read().floors == {"a": 7}
    assert [p.name for p in (tmp_path / "objects" / str(INSTALLER_TA)).iterdir()] == [writer.path.name]


def test_an_unfinished_object_never_becomes_current_and_leaves_no_file(tmp_path: Path) -> None:
    st = make_storage(tmp_path)
    st.write(INSTALLER_TA, "model/a", b"serving" * 1000)
    folder = tmp_path / "objects" / str(INSTALLER_TA)
    before = sorted(p.name for p in folder.iterdir())
    data = bytes(2 * MIB + 5)
    with st.writer(INSTALLER_TA, "model/a", len(data)) as writer:
        writer.advance(memoryview(data), MIB + 3)  # one chunk sealed, then the decryption fails
        with pytest.raises(ValueError):
            writer.commit()
    with pytest.raises(RuntimeError), st.writer(INSTALLER_TA, "model/a", len(data)) as writer:
        writer.advance(memoryview(data), len(data))
        raise RuntimeError("the model did not validate")  # complete, but never committed
    assert sorted(p.name for p in folder.iterdir()) == before
    assert st.generation(INSTALLER_TA, "model/a") == 1 and st.read(INSTALLER_TA, "model/a") == b"serving" * 1000


def test_seal_writer_output_opens_like_any_sealed_object(tmp_path: Path) -> None:
    keys = KeyHierarchy(new_huk(), "dev-1")
    tsk = keys.tsk(INSTALLER_TA)
    data = np.random.default_rng(9).bytes(2 * MIB + 1)
    for size in (0, 1, MIB, len(data)):
        out = io.BytesIO()
        writer = sealed.SealWriter(out, tsk, INSTALLER_TA, "model/x", 3, size)
        assert not writer.done
        writer.advance(memoryview(data), size)
        assert writer.done
        path = tmp_path / f"obj-{size}"
        path.write_bytes(out.getvalue())
        with open(path, "rb") as fh:
            opened = sealed.open_sealed(fh, tsk, INSTALLER_TA, "model/x")
            assert opened.header_sha256 == writer.header_sha256 and opened.header.size == size
        dst = bytearray(size)
        with open(path, "rb") as fh:
            sealed.unseal_into(fh, opened, memoryview(dst))
        assert bytes(dst) == data[:size]


def test_streamed_seal_reloads_after_a_restart_and_stays_tamper_evident(
        tee: TeeProcess, publisher: Publisher, device: Device, tmp_path: Path) -> None:
    model = mlp_model(dim=600, seed=5)  # ~2.9 MB: three sealed chunks, the last one short
    now = dt.datetime.now(dt.UTC)
    ident = PackageIdentity(package_id="mlp", version="1.0.0", security_version=1,
                            target=Target(device_ids=(DEVICE,)), created=now - dt.timedelta(minutes=5),
                            expires=now + dt.timedelta(days=1), media_type=onnx_layout.MEDIA_TYPE)
    out = tmp_path / "mlp.cpk"
    payload = onnx_layout.convert(model)
    result = build(io.BytesIO(payload), out, identity=ident, kek=publisher.kek, signer=publisher.signer,
                   chunk_size=DEFAULT_CHUNK_SIZE)
    client = tee.client()
    install(client, Package(out, result, model, payload), publisher, device)
    tee.restart()  # the warm session is gone: the next load unseals (no key release exists here)
    h = client.load_model("mlp", prepack=False)
    x = np.random.default_rng(1).standard_normal((3, 600), dtype=np.float32)
    np.testing.assert_allclose(client.infer(h, {"input": x})["output"], reference(model, x), rtol=1e-3, atol=1e-2)
    client.unload(h)
    [sealed_file] = list((device.layout.objects / str(INSTALLER_TA)).iterdir())
    data = bytearray(sealed_file.read_bytes())
    data[-MIB] ^= 1  # inside the middle sealed chunk
    sealed_file.write_bytes(bytes(data))
    tee.restart()
    with pytest.raises(EdbError) as err:
        client.load_model("mlp", prepack=False)
    assert err.value.code == "TEE_SEALED_TAMPERED"
    client.close()


def test_a_large_superseded_model_is_removed_after_the_answer(
        tee: TeeProcess, publisher: Publisher, device: Device, tmp_path: Path) -> None:
    from edb_tee.install import REMOVE_IN_BACKGROUND_BYTES

    def package(version: str, seed: int) -> Package:
        model = mlp_model(dim=1500, seed=seed)  # 18 MB of weights
        payload = onnx_layout.convert(model)
        assert len(payload) >= REMOVE_IN_BACKGROUND_BYTES
        now = dt.datetime.now(dt.UTC)
        ident = PackageIdentity(package_id="mlp", version=version, security_version=seed,
                                target=Target(device_ids=(DEVICE,)), created=now - dt.timedelta(minutes=5),
                                expires=now + dt.timedelta(days=1), media_type=onnx_layout.MEDIA_TYPE)
        out = tmp_path / f"mlp-{version}.cpk"
        result = build(io.BytesIO(payload), out, identity=ident, kek=publisher.kek, signer=publisher.signer)
        return Package(out, result, model, payload)

    client = tee.client()
    install(client, package("1.0.0", 1), publisher, device)
    install(client, package("2.0.0", 2), publisher, device)
    folder = device.layout.objects / str(INSTALLER_TA)
    # the old generation goes shortly after the answer, on a background thread
    wait_until(lambda: len(list(folder.iterdir())) == 1, "the superseded generation is removed")
    [current] = list(folder.iterdir())
    assert current.name.endswith(".2.sobj")
    tee.restart()
    h = client.load_model("mlp", prepack=False)
    assert h.version == "2.0.0"
    client.close()
