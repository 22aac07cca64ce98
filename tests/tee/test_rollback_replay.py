"""Replaying the simulated RPMB record (tee/rpmb.json) while the TEE is stopped, and the honest
restarts that must not look like one.

Reproduced first: install svn 3, stop, copy back an older rpmb.json, restart: svn 2 used to
install. Now, at start-up, the store is checked against the authenticated headers of the sealed
objects (edb_tee.integrity):

- replayed by two or more writes while an object written after it survives: refused,
  TEE_STATE_ROLLED_BACK (the service does not start);
- replayed by exactly the commit of a replacement (the previous generation was removed after that
  commit): refused, TEE_STATE_ROLLED_BACK;
- replayed by exactly the commit of a first install: indistinguishable from a crash between seal
  and commit, so the floor is restored from the object's header (svn 2 refused again, CPK_ROLLBACK)
  and the uncommitted object is removed (the install record is what the replay lost);
- replayed by uninstalls only: not caught, nothing gained (the floors stay; the model is listed
  again but its file is gone, TEE_SEALED_MISSING);
- replayed *and* every newer object deleted: NOT caught, svn 2 installs (a whole-state rollback;
  see docs/tee.md). If the older generation was removed and not put back, that model no longer
  loads (TEE_SEALED_MISSING).

Most cases drive TeeCore in-process (the code the service runs, without the socket); the first one
and the crash go through the real service process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from tee_helpers import Device, Package, Publisher, TeeProcess, install, mlp_model, reference, release_key

from edb.errors import EdbError
from edb.tee.commands import INSTALLER_TA
from edb_tee.core import TeeCore, open_device_state
from edb_tee.install import model_object
from edb_tee.integrity import object_slot


@contextmanager
def opened(device: Device) -> Iterator[TeeCore]:
    core = TeeCore(open_device_state(device.layout))
    try:
        yield core
    finally:
        core.close()


def install_in(core: TeeCore, package: Package, publisher: Publisher, device: Device, name: str = "mlp") -> None:
    owner = os.getpid()
    t = core.installer.begin(name, os.open(package.path, os.O_RDONLY | os.O_CLOEXEC), owner)
    ev = core.installer.evidence(t.txn, "n-" + os.urandom(4).hex(), owner)
    core.installer.complete(t.txn, release_key(ev, package, publisher, device.manufacturer_ca), owner)


def begin_code(core: TeeCore, package: Package, name: str = "mlp") -> str:
    with pytest.raises(EdbError) as err:
        core.installer.begin(name, os.open(package.path, os.O_RDONLY | os.O_CLOEXEC), os.getpid())
    return err.value.code


def begins(core: TeeCore, package: Package, name: str = "mlp") -> bool:
    ticket = core.installer.begin(name, os.open(package.path, os.O_RDONLY | os.O_CLOEXEC), os.getpid())
    core.installer.abort(ticket.txn, os.getpid())
    return True


def start_code(device: Device) -> str:
    with pytest.raises(EdbError) as err:
        open_device_state(device.layout)
    return err.value.code


def model_files(device: Device, name: str = "mlp") -> list[Path]:
    folder = device.layout.objects / str(INSTALLER_TA)
    return sorted(folder.glob(object_slot(model_object(name)) + ".*"))


def test_single_file_replay_after_a_first_install_restores_the_floor(tee: TeeProcess, make_package,
                                                                     publisher: Publisher, device: Device) -> None:
    rpmb = device.layout.rpmb
    before = rpmb.read_bytes()  # the record as provisioned: one write (the identity) old
    v3, v2 = make_package(version="3.0.0", security_version=3), make_package(version="2.0.0", security_version=2)
    client = tee.client()
    install(client, v3, publisher, device)
    with pytest.raises(EdbError) as err:
        client.begin_install("mlp", v2.path)
    assert err.value.code == "CPK_ROLLBACK"
    tee.stop()
    rpmb.write_bytes(before)
    tee.start()
    with pytest.raises(EdbError) as err:  # used to install here
        client.begin_install("mlp", v2.path)
    assert err.value.code == "CPK_ROLLBACK"
    assert client.list_installed() == [] and model_files(device) == []  # the replay lost the record
    install(client, v3, publisher, device)  # the same version installs again and serves
    x = np.random.default_rng(0).standard_normal((2, 64), dtype=np.float32)
    np.testing.assert_allclose(client.infer(client.load_model("mlp"), {"input": x})["output"],
                               reference(v3.model, x), rtol=1e-5, atol=1e-5)
    client.close()


def test_single_file_replay_after_a_replacement_is_refused(device: Device, make_package,
                                                           publisher: Publisher) -> None:
    rpmb = device.layout.rpmb
    with opened(device) as core:
        install_in(core, make_package(version="2.0.0", security_version=2), publisher, device)
        older = rpmb.read_bytes()
        install_in(core, make_package(version="3.0.0", security_version=3), publisher, device)
    newer = rpmb.read_bytes()
    rpmb.write_bytes(older)
    assert start_code(device) == "TEE_STATE_ROLLED_BACK"
    # the real service refuses to start, with the code
    out = subprocess.run([sys.executable, "-m", "edb_tee", "serve", "--device-dir", str(device.layout.root)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "TEE_STATE_ROLLED_BACK" in out.stderr
    assert not device.socket.exists()
    # nothing was changed by the refusals: the genuine record brings it back
    rpmb.write_bytes(newer)
    with opened(device) as core:
        assert [p.version for p in core.list_installed()] == ["3.0.0"]
        assert core.load_model("mlp", os.getpid(), prepack=None).version == "3.0.0"


def test_replay_by_two_or_more_writes_is_refused(device: Device, make_package, publisher: Publisher) -> None:
    rpmb = device.layout.rpmb
    provisioned = rpmb.read_bytes()
    a3 = make_package(package_id="a", version="3.0.0", security_version=3)
    with opened(device) as core:
        install_in(core, a3, publisher, device, name="a")
        install_in(core, make_package(package_id="b"), publisher, device, name="b")
    genuine = rpmb.read_bytes()
    rpmb.write_bytes(provisioned)
    assert start_code(device) == "TEE_STATE_ROLLED_BACK"  # b was written two commits after the replayed record
    # b uninstalled (its file deleted by the genuine service): a alone is one commit newer than the
    # replayed record, the shape of a crash: not refused, but a's floor comes back from its header
    rpmb.write_bytes(genuine)
    with opened(device) as core:
        core.installer.uninstall("b")
    rpmb.write_bytes(provisioned)
    with opened(device) as core:
        assert core.installer.floor("a") == 3 and core.list_installed() == []
        assert begin_code(core, make_package(package_id="a", version="2.0.0", security_version=2),
                          name="a") == "CPK_ROLLBACK"


def test_replay_plus_deleting_the_newer_objects(device: Device, make_package, publisher: Publisher) -> None:
    """What is and is not caught when the attacker also deletes sealed files."""
    rpmb = device.layout.rpmb
    a2 = make_package(package_id="a", version="2.0.0", security_version=2)
    with opened(device) as core:
        install_in(core, a2, publisher, device, name="a")
        older = rpmb.read_bytes()
        a2_file = model_files(device, "a")
        install_in(core, make_package(package_id="a", version="3.0.0", security_version=3), publisher, device,
                   name="a")
        a3_file = model_files(device, "a")
        install_in(core, make_package(package_id="b"), publisher, device, name="b")  # written after, kept
    assert a2_file != a3_file and not a2_file[0].exists()
    rpmb.write_bytes(older)
    a3_file[0].unlink()
    assert start_code(device) == "TEE_STATE_ROLLED_BACK"  # caught by b's header
    for f in model_files(device, "b"):
        f.unlink()
    # every object written after the replayed record is gone: not caught
    with opened(device) as core:
        assert begins(core, a2, name="a")  # the floor is back at 2
        assert [p.version for p in core.list_installed()] == ["2.0.0"]
        with pytest.raises(EdbError) as err:  # its generation was removed after the replayed commit
            core.load_model("a", os.getpid(), prepack=None)
        assert err.value.code == "TEE_SEALED_MISSING"
        install_in(core, a2, publisher, device, name="a")  # the rollback goes through
        assert core.load_model("a", os.getpid(), prepack=None).version == "2.0.0"


def test_replay_after_a_first_install_plus_deleting_it_is_not_caught(device: Device, make_package,
                                                                      publisher: Publisher) -> None:
    rpmb = device.layout.rpmb
    before = rpmb.read_bytes()
    v2 = make_package(version="2.0.0", security_version=2)
    with opened(device) as core:
        install_in(core, make_package(version="3.0.0", security_version=3), publisher, device)
    rpmb.write_bytes(before)
    for f in model_files(device):
        f.unlink()
    with opened(device) as core:  # indistinguishable from the state before the install
        install_in(core, v2, publisher, device)
        assert [p.version for p in core.list_installed()] == ["2.0.0"]


def test_replay_over_an_uninstall_is_not_caught_and_gains_nothing(device: Device, make_package,
                                                                   publisher: Publisher) -> None:
    rpmb = device.layout.rpmb
    with opened(device) as core:
        install_in(core, make_package(version="3.0.0", security_version=3), publisher, device)
        installed = rpmb.read_bytes()
        core.installer.uninstall("mlp")
    rpmb.write_bytes(installed)
    with opened(device) as core:
        assert [p.version for p in core.list_installed()] == ["3.0.0"]  # listed again...
        with pytest.raises(EdbError) as err:  # ...but its file went with the uninstall
            core.load_model("mlp", os.getpid(), prepack=None)
        assert err.value.code == "TEE_SEALED_MISSING"
        assert begin_code(core, make_package(version="2.0.0", security_version=2)) == "CPK_ROLLBACK"


# --- honest restarts ------------------------------------------------------------------------------------

CRASH_AT_COMMIT = r"""
import os, signal, sys
from pathlib import Path
from edb.attestation.keywrap import load_public_jwk, wrap_to_one_time_key
from edb_tee import storage
from edb_tee.core import TeeCore, open_device_state
from edb_tee.paths import DeviceLayout

device_dir, package, name, package_id, version, kid, dek = sys.argv[1:]

def crash(*args, **kwargs):  # the process dies after the sealed file is in place, before the commit
    os.kill(os.getpid(), signal.SIGKILL)

storage.SecureStorage._commit_object = crash
core = TeeCore(open_device_state(DeviceLayout(Path(device_dir))))
t = core.installer.begin(name, os.open(package, os.O_RDONLY), 1)
ev = core.installer.evidence(t.txn, "n", 1)
jwe = wrap_to_one_time_key(bytes.fromhex(dek), load_public_jwk(ev.one_time_jwk), package_id=package_id,
                           version=version, kid=kid)
core.installer.complete(t.txn, jwe, 1)
sys.exit("the commit ran")
"""


def crash_during_install(device: Device, package: Package, publisher: Publisher, name: str) -> None:
    m = package.result.manifest
    dek = publisher.kek.unwrap(m.wrapped_dek)
    out = subprocess.run([sys.executable, "-c", CRASH_AT_COMMIT, str(device.layout.root), str(package.path), name,
                          m.package_id, m.version, m.kid, dek.hex()], capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, out.stderr[-2000:]


def test_honest_installs_uninstalls_restarts_and_a_crash_raise_no_alarm(tee: TeeProcess, make_package,
                                                                        publisher: Publisher,
                                                                        device: Device) -> None:
    a1 = make_package(mlp_model(seed=1), package_id="a", version="1.0.0", security_version=1)
    a2 = make_package(mlp_model(seed=2), package_id="a", version="2.0.0", security_version=2)
    a3 = make_package(mlp_model(seed=3), package_id="a", version="3.0.0", security_version=3)
    client = tee.client()
    install(client, a1, publisher, device, name="a")
    install(client, a2, publisher, device, name="a")  # replaces generation 1
    install(client, make_package(package_id="b"), publisher, device, name="b")
    client.uninstall("b")
    counter = client.status()["rpmbCounter"]
    for _ in range(2):
        tee.restart()
        assert client.status()["rpmbCounter"] == counter  # the start-up check wrote nothing
        assert [(p.name, p.version) for p in client.list_installed()] == [("a", "2.0.0")]
    tee.stop()
    # a crash between sealing 3.0.0 and committing it: its file is in place, the record does not have it
    crash_during_install(device, a3, publisher, "a")
    assert len(model_files(device, "a")) == 2
    tee.start()
    assert [(p.name, p.version) for p in client.list_installed()] == [("a", "2.0.0")]
    x = np.random.default_rng(1).standard_normal((1, 64), dtype=np.float32)
    np.testing.assert_allclose(client.infer(client.load_model("a"), {"input": x})["output"],
                               reference(a2.model, x), rtol=1e-5, atol=1e-5)
    assert len(model_files(device, "a")) == 1  # the uncommitted generation was swept
    # the floor is what the sealed 3.0.0 proves: it was verified and decrypted here (the safe side of a
    # crash that cannot be told from a one-write replay); 3.0.0 itself installs again
    with pytest.raises(EdbError) as err:
        client.begin_install("a", a2.path)
    assert err.value.code == "CPK_ROLLBACK"
    install(client, a3, publisher, device, name="a")
    tee.restart()
    assert [(p.name, p.version) for p in client.list_installed()] == [("a", "3.0.0")]
    client.close()


def test_a_crash_before_the_sealed_file_is_complete_leaves_no_trace(device: Device, make_package,
                                                                    publisher: Publisher) -> None:
    """Killed while the sealed file is still a temporary file: no floor, no alarm, the file swept."""
    with opened(device) as core:
        install_in(core, make_package(version="1.0.0"), publisher, device)
    folder = device.layout.objects / str(INSTALLER_TA)
    leftover = folder / f".{object_slot(model_object('mlp'))}.2.sobj.deadbeef.tmp"
    shutil.copyfile(model_files(device)[0], leftover)  # authentic bytes under a temporary name
    with opened(device) as core:
        assert [p.version for p in core.list_installed()] == ["1.0.0"]
    assert not leftover.exists()
