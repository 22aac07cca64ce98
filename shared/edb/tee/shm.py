"""Shared-memory tensor regions across the TEE boundary (both sides).

A client creates one region per connection: a memfd (``MFD_CLOEXEC``, ``MFD_ALLOW_SEALING``) of a
fixed size, sealed with ``F_SEAL_SHRINK`` (and ``F_SEAL_GROW``, ``F_SEAL_SEAL``), mapped shared
read-write, and passed to the TEE once with ``SCM_RIGHTS`` (runner command ``ATTACH_REGION``).
The TEE checks the descriptor before keeping it: a memfd (its ``/proc/self/fd`` link) on tmpfs,
opened read-write, carrying the shrink seal and no write seal (``F_GET_SEALS``), of a size between
1 byte and its limit. The TEE never maps a region: it reads inputs with ``preadv`` and writes
outputs with ``pwritev`` on its duplicate of the descriptor, so a page the kernel cannot supply (a
hole the client punched, a memory or commit limit reached) is an answered error, never a
``SIGBUS`` in the TEE.

Tensors of at least ``threshold`` bytes then cross as :class:`~edb.tee.protocol.ShmTensor`
parameters (dtype, shape, offset, length) instead of in the frame: the client writes an input
into the region, the TEE checks the range against the region and the alignment and reads it into
its own memory before ONNX Runtime sees it, and writes outputs of at least the threshold behind
the inputs; the client copies them out (results outlive the next call).

Only tensors the normal world owns anyway (its inputs and its outputs) ever enter a region: never
model bytes, keys or anything else of the TEE's. ONNX Runtime never reads the shared pages: the
normal world can rewrite them at any time, and kernels validate their inputs then read them again
(an index checked, then re-read to copy), so each region input is snapshotted into the TEE's
memory first (time of check to time of use). Every range is checked against the region's size,
which cannot shrink. Numeric dtypes only: strings always travel in the frame.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edb.errors import TeeError
from edb.tee.errors import SHM_BOUNDS, SHM_INVALID, SHM_TOO_LARGE
from edb.tee.protocol import TENSOR_ALIGN, Param, ShmTensor, Tensor, dtype_from_code, numeric_code

Array = npt.NDArray[Any]

#: The largest region the TEE accepts (per connection); above it: ``TEE_SHM_TOO_LARGE``.
MAX_REGION_BYTES = 64 * 1024 * 1024
#: Client defaults: tensors of at least this many bytes go through the region, which is this large.
DEFAULT_THRESHOLD = 256 * 1024
DEFAULT_REGION_BYTES = 32 * 1024 * 1024

_REQUIRED_SEALS = fcntl.F_SEAL_SHRINK
#: The file system a region must live on (``statfs`` ``f_type``): tmpfs, where every memfd without
#: ``MFD_HUGETLB`` lives. Not hugetlbfs: ``F_SEAL_SHRINK`` does not stop its owner punching a hole
#: (``fallocate``), which gives the huge pages and their reservation back; the TEE's next touch of
#: that range then needs a page from the pool, and an exhausted pool is ``SIGBUS``.
_TMPFS_MAGIC = 0x01021994
#: Seals that stop the TEE writing outputs (F_SEAL_WRITE, F_SEAL_FUTURE_WRITE): refused at attach
_WRITE_SEALS = fcntl.F_SEAL_WRITE | 0x0010
_libc = ctypes.CDLL(None, use_errno=True)


def align(n: int) -> int:
    return n + (-n % TENSOR_ALIGN)


# ------------------------------------------------------------------------------- pure checks


def check_region(*, is_memfd: bool, is_regular: bool, on_tmpfs: bool, read_write: bool, seals: int | None,
                 size: int, limit: int = MAX_REGION_BYTES) -> None:
    """Whether the TEE may keep a region with these properties (pure: the facts are gathered by
    :func:`open_region`). ``seals`` is None when ``F_GET_SEALS`` is refused (not a shmem file)."""
    if not is_memfd or not is_regular or seals is None:
        raise TeeError("the shared-memory region is not a memfd", code=SHM_INVALID)
    if not on_tmpfs:
        raise TeeError("the shared-memory region is not a tmpfs memfd (MFD_HUGETLB is refused)", code=SHM_INVALID)
    if seals & _REQUIRED_SEALS != _REQUIRED_SEALS:
        raise TeeError("the shared-memory region is not sealed against shrinking (F_SEAL_SHRINK)", code=SHM_INVALID)
    if not read_write or seals & _WRITE_SEALS:
        raise TeeError("the shared-memory region is not open for reading and writing", code=SHM_INVALID)
    if size <= 0:
        raise TeeError("the shared-memory region is empty", code=SHM_INVALID)
    if size > limit:
        raise TeeError(f"shared-memory region of {size} bytes exceeds the limit {limit}", code=SHM_TOO_LARGE)


def fits(arr: Array, offset: int, threshold: int, size: int) -> bool:
    """Whether ``arr`` crosses through a region of ``size`` bytes at ``offset``: numeric, at least
    ``threshold`` bytes, and room left."""
    n = arr.nbytes
    return n >= threshold and offset + n <= size and numeric_code(arr.dtype, strict=False) is not None


def check_range(offset: int, nbytes: int, size: int) -> None:
    """A tensor's bytes lie inside the region and start on a 64-byte boundary (``TEE_SHM_BOUNDS``)."""
    if offset % TENSOR_ALIGN or nbytes <= 0 or offset + nbytes > size:
        raise TeeError(f"shared-memory tensor [{offset}, {offset}+{nbytes}) is outside the region of {size} bytes "
                       f"or not 64-byte aligned", code=SHM_BOUNDS)


# ------------------------------------------------------------------------------------ region


class Region:
    """One mapped region (either side). Not thread-safe: it belongs to one connection, which
    carries one request at a time."""

    __slots__ = ("map", "size", "threshold")

    def __init__(self, mapping: mmap.mmap, size: int, threshold: int) -> None:
        self.map = mapping
        self.size = size
        self.threshold = threshold  # tensors of at least this many bytes go through the region

    def view(self, p: ShmTensor) -> Array:
        """The tensor ``p`` as a view of the region, after checking its range."""
        dt = dtype_from_code(p.code)
        check_range(p.offset, p.nbytes, self.size)
        return np.ndarray(p.dims, dt, self.map, p.offset)

    def put(self, name: str, arr: Array, offset: int) -> ShmTensor:
        """Copy ``arr`` into the region at ``offset`` (64-aligned); the parameter that names it."""
        code = numeric_code(arr.dtype)
        assert code is not None  # strict: raised otherwise
        check_range(offset, arr.nbytes, self.size)
        np.copyto(np.ndarray(arr.shape, arr.dtype, self.map, offset), arr, casting="no")
        return ShmTensor(name, code, tuple(arr.shape), offset, arr.nbytes)

    def fits(self, arr: Array, offset: int) -> bool:
        """Whether the input ``arr`` goes through the region at ``offset``."""
        return fits(arr, offset, self.threshold, self.size)

    def close(self) -> None:
        # a view still alive (the caller kept an input view) keeps the mapping: it is unmapped when
        # the last view goes (mmap refuses to close while buffers are exported)
        with contextlib.suppress(BufferError):
            self.map.close()


def inputs_end(params: Sequence[Param]) -> int:
    """Where the request's region tensors end: the TEE writes outputs behind them."""
    end = 0
    for p in params:
        if type(p) is ShmTensor:
            end = max(end, p.offset + p.nbytes)
    return end


def create_region(size: int = DEFAULT_REGION_BYTES, threshold: int = DEFAULT_THRESHOLD) -> tuple[Region, int]:
    """Client side: a sealed memfd of ``size`` bytes, mapped; the descriptor to pass to the TEE
    (the caller closes it once passed: the mapping stays)."""
    fd = os.memfd_create("edb-tee-tensors", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return Region(mapping, size, threshold), fd


def open_region(fd: int, threshold: int, limit: int = MAX_REGION_BYTES) -> TeeRegion:
    """TEE side: check a passed descriptor (:func:`check_region`) and keep a duplicate of it. The
    caller still owns (and closes) ``fd``. The TEE does not map the region: it reads inputs with
    ``preadv`` and writes outputs with ``pwrite``, so a page the kernel cannot supply (a hole the
    client punched, a commit limit reached) is an error answered, never a ``SIGBUS``."""
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        link = ""
    st = os.fstat(fd)
    try:
        seals: int | None = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:  # EINVAL: the file does not support seals
        seals = None
    read_write = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
    check_region(is_memfd=link.startswith("/memfd:"), is_regular=stat.S_ISREG(st.st_mode),
                 on_tmpfs=_fs_type(fd) == _TMPFS_MAGIC, read_write=read_write, seals=seals, size=st.st_size,
                 limit=limit)
    return TeeRegion(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0), st.st_size, threshold)


class TeeRegion:
    """The TEE's side of one connection's region: its descriptor, never a mapping. Not
    thread-safe: it belongs to one connection, which carries one request at a time."""

    __slots__ = ("fd", "size", "threshold")

    def __init__(self, fd: int, size: int, threshold: int) -> None:
        self.fd: int | None = fd
        self.size = size
        self.threshold = threshold  # outputs of at least this many bytes go into the region

    def snapshot(self, p: ShmTensor) -> Array:
        """The tensor ``p`` copied out of the region into the TEE's own memory, after checking its
        range: ONNX Runtime must never read bytes the normal world can change under it (kernels
        validate an input, then read it again)."""
        dt = dtype_from_code(p.code)
        check_range(p.offset, p.nbytes, self.size)
        arr: Array = np.empty(p.dims, dt)
        self._io(os.preadv, arr, p.offset)
        return arr

    def put(self, name: str, arr: Array, offset: int) -> ShmTensor:
        """Write ``arr`` into the region at ``offset`` (64-aligned); the parameter that names it."""
        code = numeric_code(arr.dtype)
        assert code is not None  # strict: raised otherwise
        check_range(offset, arr.nbytes, self.size)
        self._io(os.pwritev, np.ascontiguousarray(arr), offset)
        return ShmTensor(name, code, tuple(arr.shape), offset, arr.nbytes)

    def place_outputs(self, out: Mapping[str, Array], start: int) -> list[Param]:
        """The TEE's reply parameters: outputs of at least the threshold written into the region
        from ``start`` (behind the request's inputs), the others in the frame."""
        params: list[Param] = []
        offset = align(start)
        for name, arr in out.items():
            if type(arr) is np.ndarray and fits(arr, offset, self.threshold, self.size):
                params.append(self.put(name, arr, offset))
                offset = align(offset + arr.nbytes)
            else:
                params.append(Tensor(name, arr))
        return params

    def _io(self, op: Any, arr: Array, offset: int) -> None:
        """All of ``arr``'s bytes through ``op`` (``os.preadv`` or ``os.pwritev``) at ``offset``."""
        if self.fd is None:
            raise TeeError("the shared-memory region is closed", code=SHM_INVALID)
        view = arr.reshape(-1).view(np.uint8).data
        done = 0
        while done < len(view):
            try:
                n = op(self.fd, [view[done:]], offset + done)
            except OSError as exc:  # ENOSPC / ENOMEM: a page the kernel cannot supply
                raise TeeError(f"shared-memory region I/O failed: {exc.strerror or exc}", code=SHM_INVALID) from exc
            if n <= 0:  # cannot happen while F_SEAL_SHRINK holds; never loop on it
                raise TeeError("shared-memory region ended early", code=SHM_INVALID)
            done += n

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def _fs_type(fd: int) -> int | None:
    """``fstatfs(fd).f_type`` (the first member of ``struct statfs`` on Linux), None if refused."""
    buf = ctypes.create_string_buffer(512)  # larger than struct statfs on every Linux ABI
    if _libc.fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
