"""Review findings on the shared-memory path (edb.tee.shm, runner ATTACH_REGION/INFER): what ONNX
Runtime reads must be the TEE's own snapshot of a region input, never the shared pages the normal
world can rewrite while a kernel validates then re-reads them (a double fetch: ONNX Runtime's
Gather checks its indices in one pass and reads them again to copy)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from tee_helpers import Device, TeeProcess

from edb.errors import EdbError
from edb.tee import RUNNER_TA, TeeContext
from edb.tee.commands import RunnerCmd
from edb.tee.protocol import Fd, ShmTensor, Value
from edb.tee.shm import create_region, open_region
from edb.tee.transport import PeerCredentials
from edb_tee.tas.base import Call, Connection
from edb_tee.tas.runner import infer


class RewritingModels:
    """Stands in for the model manager (pure logic: what the runner hands it): while 'running', the
    normal world rewrites its region; the model sees what it was given."""

    def __init__(self, normal_world: Any) -> None:
        self.normal_world = normal_world
        self.seen_before: Any = None
        self.seen_after: Any = None

    def infer(self, handle: int, owner: int, feeds: Mapping[str, Any]) -> dict[str, Any]:
        x = feeds["x"]
        self.seen_before = np.array(x, copy=True)
        self.normal_world.map[0:64] = b"\xff" * 64  # the hostile rewrite, mid-run
        self.seen_after = np.array(x, copy=True)
        return {}


def test_region_inputs_reach_the_model_as_a_private_snapshot() -> None:
    client_region, fd = create_region(1 << 20)
    try:
        tee_region = open_region(fd, threshold=64)
    finally:
        os.close(fd)
    data = np.arange(16, dtype=np.int64)
    p = client_region.put("x", data, 0)
    models = RewritingModels(client_region)
    conn = Connection(tee_region)
    call = Call(SimpleNamespace(models=models), PeerCredentials(os.getpid(), os.getuid(), os.getgid()),
                [Value(1), ShmTensor(p.name, p.code, p.dims, p.offset, p.nbytes)], [], conn=conn)
    infer(call)
    np.testing.assert_array_equal(models.seen_before, data)
    np.testing.assert_array_equal(models.seen_after, data)  # the rewrite did not reach the model's input
    conn.close()
    client_region.close()


class NeverRun:
    def infer(self, handle: int, owner: int, feeds: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("the model must not run")


def test_overlapping_region_inputs_cannot_multiply_the_tees_copies() -> None:
    """Every input is snapshotted, so inputs naming the same bytes again would make the TEE allocate
    the region many times over (64 parameters x 64 MiB): refused past one region's worth."""
    client_region, fd = create_region(1 << 20)
    try:
        tee_region = open_region(fd, threshold=64)
    finally:
        os.close(fd)
    whole = ShmTensor("a", 2, (1 << 20,), 0, 1 << 20)  # uint8 over the whole region
    conn = Connection(tee_region)
    peer = PeerCredentials(os.getpid(), os.getuid(), os.getgid())
    for hostile in ([whole, whole._replace(name="b")], [whole._replace(dims=(1 << 19,), nbytes=1 << 19),
                                                        whole._replace(name="b", dims=((1 << 19) + 64,),
                                                                       nbytes=(1 << 19) + 64, offset=(1 << 19) - 64)]):
        call = Call(SimpleNamespace(models=NeverRun()), peer, [Value(1), *hostile], [], conn=conn)
        with pytest.raises(EdbError) as err:
            infer(call)
        assert err.value.code == "TEE_SHM_BOUNDS"
    conn.close()
    client_region.close()


MFD_HUGETLB = 4  # linux/memfd.h (os.MFD_HUGETLB where Python defines it)


def test_a_hugetlb_memfd_is_refused_before_it_is_mapped() -> None:
    """A memfd on hugetlbfs passes the memfd, regular-file, read-write and shrink-seal checks, but
    F_SEAL_SHRINK does not stop its owner punching a hole (fallocate PUNCH_HOLE drops the pages and
    their reservation): the TEE's next touch of that range needs a fresh huge page, and with the
    pool exhausted the kernel answers SIGBUS, killing the TEE (reproduced with a 2-page pool). So
    the TEE maps tmpfs memfds only, whatever the pool: refused as not tmpfs, not for want of pages."""
    fd = os.memfd_create("edb-tee-tensors", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | MFD_HUGETLB)
    try:
        os.ftruncate(fd, 2 << 20)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        with pytest.raises(EdbError) as err:
            open_region(fd, threshold=64)
        assert err.value.code == "TEE_SHM_INVALID"
        assert "tmpfs" in err.value.message
    finally:
        os.close(fd)
    client_region, fd = create_region(1 << 20)  # the ordinary (tmpfs) memfd is still mapped
    try:
        open_region(fd, threshold=64).close()
    finally:
        os.close(fd)
        client_region.close()


def test_every_descriptor_sent_with_a_region_attach_is_closed(tee: TeeProcess, device: Device) -> None:
    """The region descriptor passed is closed once the TEE keeps its duplicate; extra descriptors beside it, and all of
    those of a refused attach, are closed before the answer (counted in the TEE's /proc fd table)."""
    ctx = TeeContext(device.socket)
    session = ctx.open_session(RUNNER_TA)
    warm, warm_fd = create_region(1 << 20)
    session.invoke(RunnerCmd.ATTACH_REGION, [Fd(0), Value(64)], [warm_fd])  # the connection's first mapping
    os.close(warm_fd)
    before = len(os.listdir(f"/proc/{tee.pid}/fd"))
    regions = [create_region(1 << 20) for _ in range(4)]
    fds = [fd for _, fd in regions]
    assert session.invoke(RunnerCmd.ATTACH_REGION, [Fd(2), Value(64)], fds)[0] == Value(1 << 20)  # 3 extras
    assert len(os.listdir(f"/proc/{tee.pid}/fd")) == before
    for refused in ([Fd(0), Value(0)], [Fd(0)], [Value(64)]):  # bad threshold, missing value, no descriptor
        with pytest.raises(EdbError) as err:
            session.invoke(RunnerCmd.ATTACH_REGION, refused, fds)
        assert err.value.code == "TEE_BAD_PARAMETERS"
        assert len(os.listdir(f"/proc/{tee.pid}/fd")) == before
    ctx.close()
    warm.close()
    for region, fd in regions:
        os.close(fd)
        region.close()
