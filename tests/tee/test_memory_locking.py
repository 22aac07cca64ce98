"""Plaintext buffers of the TEE service are locked in RAM where permitted, and the service degrades
with one warning where they cannot be.

- As root (the tests run as root, with CAP_IPC_LOCK) the model buffer is locked: the service's
  VmLck (/proc/<pid>/status) covers the loaded model and drops back once it is unloaded and
  uninstalled.
- Without the privilege: the service is started with an empty capability bounding set
  (`setpriv --bounding-set -all`: no capability at all, CapEff 0, so no CAP_IPC_LOCK) and
  RLIMIT_MEMLOCK at 64 KiB (`prlimit --memlock`): what an unprivileged service user has. Its uid
  stays 0, which only makes it the owner of the test's files: a uid switch is not possible here,
  the interpreter lives under /root, mode 0700. mlock then fails for the model buffer (larger than
  64 KiB): the service logs the warning once and still installs, loads and infers correctly.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tee_helpers import START_BOUND_S, Device, Publisher, TeeProcess, install, mlp_model, reference, wait_until

MEMLOCK_LIMIT = 64 * 1024
WARNING = "mlock not permitted"


def vm_locked_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmLck in /proc/<pid>/status")


def cap_effective(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff in /proc/<pid>/status")


CAP_IPC_LOCK = 14


class UnprivilegedTee(TeeProcess):
    """The TEE service without any capability and with a 64 KiB RLIMIT_MEMLOCK (both set before exec)."""

    def start(self) -> UnprivilegedTee:
        setpriv, prlimit = shutil.which("setpriv"), shutil.which("prlimit")
        assert setpriv and prlimit, "util-linux setpriv and prlimit are needed"
        self.proc = subprocess.Popen(
            [setpriv, "--bounding-set", "-all", "--inh-caps", "-all", "--",
             prlimit, f"--memlock={MEMLOCK_LIMIT}:{MEMLOCK_LIMIT}", "--",
             sys.executable, "-m", "edb_tee", "serve", "--device-dir", str(self.device.layout.root)],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115 - the child owns it
        proc = self.proc
        wait_until(lambda: self.device.socket.exists() or proc.poll() is not None, "the service listens",
                   START_BOUND_S)
        assert proc.poll() is None, self.log.read_text()[-2000:]
        return self


@pytest.fixture
def unprivileged(device: Device) -> Iterator[UnprivilegedTee]:
    proc = UnprivilegedTee(device).start()
    yield proc
    proc.stop()


def test_without_the_privilege_mlock_fails_with_one_warning_and_the_service_works(
        unprivileged: UnprivilegedTee, make_package, publisher: Publisher, device: Device) -> None:
    pid = unprivileged.pid
    assert "python" in Path(f"/proc/{pid}/cmdline").read_text()  # setpriv and prlimit exec'd into it
    assert cap_effective(pid) == 0
    client = unprivileged.client()
    assert client.status()["hardening"]["memlockLimit"] == MEMLOCK_LIMIT
    packages = [make_package(mlp_model(dim=256, seed=s), version=f"{s}.0.0", security_version=s) for s in (1, 2)]
    assert all(len(p.payload) > MEMLOCK_LIMIT for p in packages)
    x = np.random.default_rng(0).standard_normal((3, 256), dtype=np.float32)
    for p in packages:  # an install, a load and inference, then a replacement
        install(client, p, publisher, device)
        handle = client.load_model("mlp")
        np.testing.assert_allclose(client.infer(handle, {"input": x})["output"], reference(p.model, x),
                                   rtol=1e-4, atol=1e-4)
        client.unload(handle)
    assert vm_locked_bytes(pid) <= MEMLOCK_LIMIT  # nothing the size of a model is locked
    client.close()
    unprivileged.stop()
    log = unprivileged.log.read_text()
    assert log.count(WARNING) == 1, log[-3000:]
    assert "LimitMEMLOCK=infinity" in log


def test_as_root_the_loaded_model_is_locked(tee: TeeProcess, make_package, publisher: Publisher,
                                            device: Device) -> None:
    assert cap_effective(tee.pid) & (1 << CAP_IPC_LOCK)  # the fixture's service keeps the privilege
    package = make_package(mlp_model(dim=512, seed=4))  # 2 x 1 MiB of weights
    client = tee.client()
    before = vm_locked_bytes(tee.pid)
    install(client, package, publisher, device)
    handle = client.load_model("mlp")
    locked = vm_locked_bytes(tee.pid) - before
    assert locked >= len(package.payload), (locked, len(package.payload))
    assert locked < 2 * len(package.payload) + 64 * 1024  # one locked copy of the model, not two
    client.unload(handle)
    client.uninstall("mlp")  # drops the validated session kept warm at install: its buffer is wiped and unlocked
    assert vm_locked_bytes(tee.pid) == before
    assert WARNING not in tee.log.read_text()
    client.close()
