"""Process hardening of the TEE service, and memory that holds secrets.

- ``PR_SET_DUMPABLE 0``: no core dumps, and other non-root processes of the same user cannot ptrace
  it or read ``/proc/<pid>/mem``.
- ``RLIMIT_CORE 0``: no core file even if something re-enables dumping.
- Secret buffers (decrypted models, unsealed objects) are anonymous mappings marked
  ``MADV_DONTDUMP`` and ``MADV_DONTFORK`` and ``mlock``-ed where ``RLIMIT_MEMLOCK`` allows; when
  it does not, the service logs one warning and continues (pages may then reach swap).

What Python cannot guarantee: ``bytes`` objects (keys, JSON, protobuf graph bytes) are immutable
and are freed without being overwritten; the allocator may have moved or copied data; ONNX Runtime
keeps its own copies (prepacked weights when prepacking is on, intermediate tensors, outputs); OpenSSL
and jwcrypto hold key copies in their own objects. We overwrite what we own (the mapped buffers)
on unload and on shutdown; root on the host can read everything, as it could on a real device
without TrustZone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import resource
from dataclasses import dataclass

log = logging.getLogger("edb_tee.hardening")

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_warned_mlock = False


@dataclass(frozen=True)
class HardeningReport:
    dumpable: bool
    core_limit: int
    memlock_limit: int  # bytes, -1 = unlimited

    def to_json(self) -> dict[str, object]:
        return {"dumpable": self.dumpable, "coreLimit": self.core_limit, "memlockLimit": self.memlock_limit}


def harden_process() -> HardeningReport:
    if _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("PR_SET_DUMPABLE failed (errno %d)", ctypes.get_errno())
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return report()


def report() -> HardeningReport:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    core, _ = resource.getrlimit(resource.RLIMIT_CORE)
    return HardeningReport(
        dumpable=_libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0) != 0,
        core_limit=core,
        memlock_limit=-1 if soft == resource.RLIM_INFINITY else soft,
    )


def buffer_address(mm: mmap.mmap) -> int:
    anchor = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


class SecureBuffer:
    """An anonymous, page-aligned mapping for plaintext: not dumped, not inherited by children,
    locked in RAM when permitted, overwritten with zeros by :meth:`wipe` / :meth:`close`."""

    def __init__(self, size: int) -> None:
        self.size = size  # logical size; the mapping may be larger (``capacity``)
        self.capacity = max(size, 1)
        self.mm = mmap.mmap(-1, self.capacity, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for advice in ("MADV_DONTDUMP", "MADV_DONTFORK"):
            flag = getattr(mmap, advice, None)
            if flag is not None:
                self.mm.madvise(flag)
        self.address = buffer_address(self.mm)
        self.locked = _mlock(self.address, self.capacity)
        self.released = False

    def view(self) -> memoryview:
        return memoryview(self.mm)[: self.size]

    def wipe(self) -> None:
        if not self.mm.closed and not self.released:
            ctypes.memset(self.address, 0, self.capacity)

    def release(self) -> None:
        """Overwrite and give the pages back while views may still exist (they then read zeros): for
        a buffer whose contents someone else now holds a copy of. :meth:`close` unmaps it later."""
        if self.mm.closed or self.released:
            return
        self.wipe()
        if self.locked:
            _libc.munlock(ctypes.c_void_p(self.address), ctypes.c_size_t(self.capacity))
            self.locked = False
        self.mm.madvise(mmap.MADV_DONTNEED)  # private anonymous: the pages are freed, reads see zeros
        self.released = True

    def close(self) -> None:
        """Overwrite, unlock and unmap. If numpy views still reference the mapping it cannot be
        unmapped yet; it is wiped anyway and unmapped when the last view goes."""
        if self.mm.closed:
            return
        self.wipe()
        if self.locked:
            _libc.munlock(ctypes.c_void_p(self.address), ctypes.c_size_t(self.capacity))
            self.locked = False
        try:
            self.mm.close()
        except BufferError:
            log.debug("buffer still referenced; wiped, unmapped later")


def _mlock(address: int, size: int) -> bool:
    global _warned_mlock
    if _libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(size)) == 0:
        return True
    if not _warned_mlock:
        _warned_mlock = True
        log.warning("mlock not permitted (errno %d, RLIMIT_MEMLOCK too low): plaintext pages may be swapped; "
                    "raise the limit for the TEE service (LimitMEMLOCK=infinity)", ctypes.get_errno())
    return False
