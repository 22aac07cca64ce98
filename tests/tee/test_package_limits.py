"""begin_install applies every size limit before any pass over the caller's file: a sparse file far
above the limit, a valid package with a huge tail of holes, a stream table declaring a huge stream,
and a package whose signer is not pinned are all refused having read next to nothing (the bytes
this process read, /proc/self/io rchar, stay far below the file's size). In-process (TeeCore): the
same code the service runs, without the socket."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from tee_helpers import Device, Publisher, mlp_model

from edb.cpk.frame import ENTRY_SIZE, HEADER_SIZE
from edb.errors import EdbError
from edb_tee.core import TeeCore, open_device_state
from edb_tee.package_file import MAX_UNACCOUNTED_BYTES, file_sha256, file_size_limit

MIB = 1024 * 1024


def bytes_read() -> int:
    """What this process has read through read/pread system calls so far (all threads)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.fixture
def core(device: Device, make_package) -> Iterator[TeeCore]:
    core = TeeCore(open_device_state(device.layout))
    # warm up: a valid begin imports everything on the path (module files would count as reads)
    ticket = begin(core, make_package().path)
    core.installer.abort(ticket.txn, os.getpid())
    yield core
    core.close()


def begin(core: TeeCore, path: Path):  # type: ignore[no-untyped-def]
    return core.installer.begin("mlp", os.open(path, os.O_RDONLY | os.O_CLOEXEC), os.getpid())


def refused(core: TeeCore, path: Path) -> tuple[str, int]:
    """The code ``begin`` refused ``path`` with, and how many bytes were read meanwhile."""
    before = bytes_read()
    with pytest.raises(EdbError) as err:
        begin(core, path)
    return err.value.code, bytes_read() - before


def test_sparse_file_far_above_the_limit_is_refused_without_reading_it(core: TeeCore, make_package,
                                                                       tmp_path: Path) -> None:
    limit = file_size_limit(core.state.config.measured.max_model_bytes)
    sparse = tmp_path / "sparse.cpk"
    shutil.copyfile(make_package().path, sparse)
    os.truncate(sparse, 2 * limit)  # a valid package followed by gigabytes of holes
    code, read = refused(core, sparse)
    assert code == "CPK_TOO_LARGE" and read < MIB
    assert core.installer.open_count() == 0


def test_valid_package_with_a_long_tail_is_refused_before_any_pass(core: TeeCore, make_package,
                                                                   tmp_path: Path) -> None:
    pkg = make_package()
    tail = tmp_path / "tail.cpk"
    shutil.copyfile(pkg.path, tail)
    os.truncate(tail, pkg.path.stat().st_size + 64 * MIB)  # within the file limit, but not package bytes
    code, read = refused(core, tail)
    assert code == "CPK_TOO_LARGE" and read < MIB
    # the tolerated padding still installs
    ok = tmp_path / "padded.cpk"
    shutil.copyfile(pkg.path, ok)
    os.truncate(ok, pkg.path.stat().st_size + MAX_UNACCOUNTED_BYTES)
    ticket = begin(core, ok)
    assert ticket.sha256 == hashlib.sha256(ok.read_bytes()).hexdigest()
    core.installer.abort(ticket.txn, os.getpid())


def test_stream_declared_above_the_limit_is_refused_without_reading(core: TeeCore, make_package,
                                                                    tmp_path: Path) -> None:
    data = bytearray(make_package().path.read_bytes())
    offset, _ = struct.unpack_from("<QQ", data, HEADER_SIZE)  # stream 0: the payload
    struct.pack_into("<QQ", data, HEADER_SIZE, offset, 1 << 40)  # now declares 1 TiB
    huge = tmp_path / "huge.cpk"
    huge.write_bytes(bytes(data))
    os.truncate(huge, 512 * MIB)  # sparse: large enough that a pass would show
    code, read = refused(core, huge)
    assert code == "CPK_TOO_LARGE" and read < MIB
    assert HEADER_SIZE + 4 * ENTRY_SIZE < MIB


def test_no_pass_over_a_package_whose_signer_is_not_pinned(core: TeeCore, make_package,
                                                           other_publisher: Publisher) -> None:
    foreign = make_package(mlp_model(dim=1024, layers=4, seed=3), signed_by=other_publisher)  # 16 MiB
    size = foreign.path.stat().st_size
    assert size > 16 * MIB
    code, read = refused(core, foreign.path)
    assert code == "CPK_UNTRUSTED_SIGNER" and read < MIB


def test_the_file_hash_reads_exactly_the_checked_size(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(3 * MIB + 5))
    fd = os.open(f, os.O_RDONLY)
    try:
        assert file_sha256(fd, 3 * MIB + 5) == hashlib.sha256(f.read_bytes()).hexdigest()
        for wrong in (3 * MIB, 3 * MIB + 6):  # the file grew after the check, or shrank
            with pytest.raises(EdbError) as err:
                file_sha256(fd, wrong)
            assert err.value.code == "TEE_PACKAGE_FILE"
    finally:
        os.close(fd)
