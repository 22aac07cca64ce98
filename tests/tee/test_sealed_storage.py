"""Sealed storage and the simulated RPMB: what the simulation catches, with its codes.

Caught: an edited object or header (TEE_SEALED_TAMPERED), an object swapped with another object of
the device (TEE_SEALED_NAME_MISMATCH), an object of another trusted app or device moved in
(TEE_SEALED_TAMPERED: its key does not unwrap), an older copy of the same object put back
(TEE_SEALED_ROLLBACK), an edited RPMB record (TEE_RPMB_TAMPERED), an older RPMB record while the
service runs (TEE_RPMB_ROLLBACK). Not catchable without hardware: the whole device directory
restored to an older copy while the service is stopped (see docs/tee.md).
"""

from __future__ import annotations

import io
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from tee_helpers import Device, Publisher, TeeProcess, install, mlp_model

from edb.errors import EdbError
from edb.tee.commands import DEVICE_TA, INSTALLER_TA, RUNNER_TA
from edb_tee import sealed
from edb_tee.keys import KeyHierarchy, new_huk
from edb_tee.rpmb import ReplayProtectedStore, decode_state, encode_state
from edb_tee.storage import SecureStorage


def make_storage(root: Path, huk: bytes | None = None, device_id: str = "dev-1") -> SecureStorage:
    keys = KeyHierarchy(huk or new_huk(), device_id)
    root.mkdir(parents=True, exist_ok=True)
    rpmb_path = root / "rpmb.json"
    rpmb = ReplayProtectedStore(rpmb_path, keys.rpmb_key) if rpmb_path.exists() else \
        ReplayProtectedStore.create(rpmb_path, keys.rpmb_key)
    return SecureStorage(root / "objects", keys, rpmb)


def current_file(st: SecureStorage, ta: uuid.UUID, name: str) -> Path:
    gen = st.generation(ta, name)
    assert gen is not None
    return st._path(ta, name, gen)


def code_of(fn) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(EdbError) as err:
        fn()
    return err.value.code


def test_roundtrip_generations_and_floors_survive_reopen(tmp_path: Path) -> None:
    huk = new_huk()
    st = make_storage(tmp_path, huk)
    data = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)  # several chunks
    st.write(RUNNER_TA, "model/a", data, also=lambda s: s.floors.__setitem__("pkg", 4))
    st.write(RUNNER_TA, "model/a", data[:100])
    assert st.generation(RUNNER_TA, "model/a") == 2
    assert len(list((tmp_path / "objects" / str(RUNNER_TA)).iterdir())) == 1  # the old generation is gone
    again = make_storage(tmp_path, huk)
    assert again.read(RUNNER_TA, "model/a") == data[:100]
    assert again.rpmb.read().floors == {"pkg": 4}
    buf = again.read_into(RUNNER_TA, "model/a")
    assert bytes(buf.view()) == data[:100] and buf.locked in (True, False)
    buf.close()
    assert buf.mm.closed


def test_swapped_objects_are_caught(tmp_path: Path) -> None:
    st = make_storage(tmp_path)
    st.write(RUNNER_TA, "model/a", b"A" * 5000)
    st.write(RUNNER_TA, "model/b", b"B" * 5000)
    shutil.copyfile(current_file(st, RUNNER_TA, "model/b"), current_file(st, RUNNER_TA, "model/a"))
    assert code_of(lambda: st.read(RUNNER_TA, "model/a")) == "TEE_SEALED_NAME_MISMATCH"


def test_older_copy_is_caught(tmp_path: Path) -> None:
    st = make_storage(tmp_path)
    st.write(RUNNER_TA, "model/a", b"old" * 1000)
    saved = current_file(st, RUNNER_TA, "model/a").read_bytes()
    st.write(RUNNER_TA, "model/a", b"new" * 1000)
    current_file(st, RUNNER_TA, "model/a").write_bytes(saved)
    assert code_of(lambda: st.read(RUNNER_TA, "model/a")) == "TEE_SEALED_ROLLBACK"


def test_edits_truncation_other_ta_and_other_device_are_caught(tmp_path: Path) -> None:
    huk = new_huk()
    st = make_storage(tmp_path / "a", huk)
    st.write(RUNNER_TA, "x", b"secret" * 1000)
    path = current_file(st, RUNNER_TA, "x")
    original = path.read_bytes()
    for mutate in (lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # ciphertext / tag
                   lambda b: b.replace(b'"gen":1', b'"gen":2'),  # header
                   lambda b: b[:-10],  # truncated
                   lambda b: b + b"\0"):  # extended
        path.write_bytes(mutate(original))
        assert code_of(lambda: st.read(RUNNER_TA, "x")) == "TEE_SEALED_TAMPERED"
    path.write_bytes(original)
    assert st.read(RUNNER_TA, "x") == b"secret" * 1000
    # the same name sealed by another trusted app cannot be opened with this one's key
    st.write(DEVICE_TA, "x", b"other-ta")
    shutil.copyfile(current_file(st, DEVICE_TA, "x"), path)
    assert code_of(lambda: st.read(RUNNER_TA, "x")) == "TEE_SEALED_TAMPERED"
    # nor an object of another device (other HUK)
    other = make_storage(tmp_path / "b")
    other.write(RUNNER_TA, "x", b"elsewhere")
    shutil.copyfile(current_file(other, RUNNER_TA, "x"), path)
    assert code_of(lambda: st.read(RUNNER_TA, "x")) == "TEE_SEALED_TAMPERED"


def test_chunk_reorder_and_splice_fail(tmp_path: Path) -> None:
    key = new_huk()
    buf = io.BytesIO()
    sealed.seal(buf, key, RUNNER_TA, "n", 1, b"a" * 64 + b"b" * 64, chunk=64)
    raw = bytearray(buf.getvalue())
    end = len(raw)
    c0, c1 = raw[end - 160:end - 80], raw[end - 80:]
    raw[end - 160:] = c1 + c0
    f = tmp_path / "o"
    f.write_bytes(bytes(raw))
    with open(f, "rb") as fh:
        opened = sealed.open_sealed(fh, key, RUNNER_TA, "n")
        out = bytearray(128)
        with pytest.raises(EdbError) as err:
            sealed.unseal_into(fh, opened, memoryview(out))
    assert err.value.code == "TEE_SEALED_TAMPERED"


def test_rpmb_edits_and_older_copies(tmp_path: Path) -> None:
    huk = new_huk()
    st = make_storage(tmp_path, huk)
    st.rpmb.commit(lambda s: s.floors.__setitem__("p", 1))
    old = st.rpmb.path.read_bytes()
    st.rpmb.commit(lambda s: s.floors.__setitem__("p", 5))
    # an older authentic copy while the service runs
    st.rpmb.path.write_bytes(old)
    assert code_of(lambda: st.rpmb.commit(lambda s: None)) == "TEE_RPMB_ROLLBACK"
    # an edited record (the MAC needs the HUK)
    keys = KeyHierarchy(huk, "dev-1")
    state = decode_state(old, keys.rpmb_key)
    state.floors["p"] = 0
    forged = encode_state(state, b"\0" * 32)
    st.rpmb.path.write_bytes(forged)
    assert code_of(lambda: ReplayProtectedStore(st.rpmb.path, keys.rpmb_key)) == "TEE_RPMB_TAMPERED"


def test_crash_leftovers_are_swept(tmp_path: Path) -> None:
    st = make_storage(tmp_path)
    st.write(RUNNER_TA, "a", b"1")
    stray = st._path(RUNNER_TA, "a", 7)
    stray.write_bytes(b"left by a crash between write and commit")
    assert st.sweep() == 1 and not stray.exists()
    assert st.read(RUNNER_TA, "a") == b"1"


def test_swapped_and_rolled_back_models_in_the_service(tee: TeeProcess, make_package, publisher: Publisher,
                                                       device: Device) -> None:
    client = tee.client()
    install(client, make_package(mlp_model(seed=1), package_id="a", version="1.0.0"), publisher, device, name="a")
    install(client, make_package(mlp_model(seed=2), package_id="b", version="1.0.0"), publisher, device, name="b")
    objects = device.layout.objects / str(INSTALLER_TA)
    a_file = next(p for p in objects.iterdir() if p.name.startswith(_slot("model/a")))
    b_file = next(p for p in objects.iterdir() if p.name.startswith(_slot("model/b")))
    saved_a = a_file.read_bytes()
    install(client, make_package(mlp_model(seed=3), package_id="a", version="2.0.0", security_version=2),
            publisher, device, name="a")
    a2_file = next(p for p in objects.iterdir() if p.name.startswith(_slot("model/a")))
    tee.stop()
    good_a2 = a2_file.read_bytes()
    a2_file.write_bytes(b_file.read_bytes())  # swap
    tee.start()
    assert code_of(lambda: client.load_model("a")) == "TEE_SEALED_NAME_MISMATCH"
    tee.stop()
    a2_file.write_bytes(saved_a)  # older copy of the same object
    tee.start()
    assert code_of(lambda: client.load_model("a")) == "TEE_SEALED_ROLLBACK"
    tee.stop()
    a2_file.write_bytes(good_a2)
    tee.start()
    assert client.load_model("a").version == "2.0.0"
    client.close()


def _slot(name: str) -> str:
    import hashlib

    return hashlib.sha256(name.encode()).hexdigest()[:32]
