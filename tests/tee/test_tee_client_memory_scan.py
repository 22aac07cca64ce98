"""No plaintext in the processes of the TEE client library: after an install and a load, no file
under the device directory, the package cache or the temp directory, and no byte of the memory of two
small processes that make the installer's and the runner's TEE calls through ``edb.tee.TeeClient``
(begin/complete install with a released key; load and infer), read through /proc/<pid>/mem, contains
any 64-byte window of the plaintext model.

Scope, plainly: these are stand-in scripts using the same client library as the modules, not the
package_installer and inference_runner modules themselves (their SDKs, twins, downloads); the real
modules' processes are scanned by tests/e2e/test_no_plaintext_real_modules.py on the full stack. This
test is the fast, focused one: it fails if the client library (or the TEE's replies) ever carries
plaintext into a normal-world process.

Every readable mapping is scanned (anonymous, heap, stacks, file-backed, shared), and a readable
mapping that cannot be read fails the test rather than being skipped: a copy of the model could hide
in exactly such a mapping. Only the kernel's [vvar]/[vsyscall] pages, which /proc/<pid>/mem never
serves, are left out.

Method: a 64-byte window at any memory offset contains an 8-aligned 8-byte word followed by at
least 24 more bytes of the window; we index every 8-byte string of the plaintext at every byte
offset (skipping low-entropy ones such as zero padding, which appear everywhere), look up each
aligned word of memory, and confirm 32 bytes. A positive control (a process that does hold the
plaintext, at an odd offset) shows the scanner finds it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tee_helpers import Device, Publisher, TeeProcess, mlp_model, release_key

from edb.tee.types import Evidence

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _bucket(words: np.ndarray) -> np.ndarray:
    """A 24-bit multiplicative hash: memory's common words (zeros, small ints) spread out."""
    with np.errstate(over="ignore"):
        return (words * _GOLDEN) >> np.uint64(40)


class PlaintextIndex:
    """Every 8-byte string of the plaintext at every byte offset (low-entropy ones excepted), so a
    64-byte window anywhere in memory is found from the first 8-aligned word inside it."""

    def __init__(self, plaintext: bytes) -> None:
        self.plaintext = plaintext
        rows = np.lib.stride_tricks.sliding_window_view(np.frombuffer(plaintext, np.uint8), 8)
        srt = np.sort(rows, axis=1)
        distinct = 1 + np.count_nonzero(np.diff(srt, axis=1), axis=1)
        offsets = np.nonzero(distinct >= 6)[0]
        keys = np.ascontiguousarray(rows[offsets]).view("<u8").ravel()
        self.offset_of = dict(zip(keys.tolist(), offsets.tolist(), strict=True))
        self.keys = np.unique(keys)
        self.bitmap = np.zeros(1 << 24, dtype=bool)
        self.bitmap[_bucket(self.keys)] = True

    def find(self, data: bytes | memoryview) -> int | None:
        """Offset in ``data`` where 32 bytes of the plaintext start (from an indexed word), or None."""
        buf = memoryview(data)
        words = np.frombuffer(buf, dtype="<u8", count=len(buf) // 8)
        cand = np.nonzero(self.bitmap[_bucket(words)] & (words != 0))[0]
        if not len(cand):
            return None
        values = words[cand]
        at = np.minimum(np.searchsorted(self.keys, values), len(self.keys) - 1)  # keys are sorted
        for i in cand[self.keys[at] == values].tolist():
            pos, off = 8 * i, self.offset_of[int(words[i])]
            if bytes(buf[pos:pos + 32]) == self.plaintext[off:off + 32]:
                return pos
        return None


NOT_SERVED_BY_PROC_MEM = ("[vvar]", "[vsyscall]", "[vvar_vclock]")
CHUNK = 16 * 1024 * 1024
OVERLAP = 64


class UnreadableMapping(AssertionError):
    """A readable mapping of the scanned process could not be read: the scan would be incomplete."""


def scan_process(pid: int, index: PlaintextIndex) -> list[str]:
    """Hits in every readable mapping of ``pid``; raises :class:`UnreadableMapping` for one it
    cannot read (in full), and asserts something was scanned."""
    hits: list[str] = []
    scanned = 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            parts = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            perms, path = parts[1], (parts[5].strip() if len(parts) > 5 else "")
            if "r" not in perms or path in NOT_SERVED_BY_PROC_MEM:
                continue
            pos = start
            while pos < end:
                size = min(CHUNK + OVERLAP, end - pos)
                try:
                    mem.seek(pos)
                    data = mem.read(size)
                except OSError as exc:
                    raise UnreadableMapping(f"{pid}: cannot read {line.strip()}: {exc}") from None
                if len(data) != size:
                    raise UnreadableMapping(f"{pid}: short read ({len(data)} of {size}) in {line.strip()}")
                scanned += len(data)
                if index.find(data) is not None:
                    hits.append(f"{pid}: {line.strip()}")
                    break
                pos += CHUNK
    assert scanned > 1024 * 1024, f"scanned only {scanned} bytes of {pid}"
    return hits


def scan_files(roots: list[Path], index: PlaintextIndex) -> list[str]:
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_socket() and index.find(path.read_bytes()) is not None:
                hits.append(str(path))
    return hits


INSTALLER = r"""
import json, sys
from edb.tee import TeeClient
tee = TeeClient(sys.argv[1])
t = tee.begin_install("mlp", sys.argv[2])
ev = tee.get_install_evidence(t, "scan-nonce")
print(json.dumps(ev.to_json()), flush=True)
jwe = sys.stdin.readline().strip()
s = tee.complete_install(t, jwe)
print(s.package.version, flush=True)
sys.stdin.readline()
"""

RUNNER = r"""
import sys
import numpy as np
import pytest
from edb.tee import TeeClient
tee = TeeClient(sys.argv[1])
h = tee.load_model("mlp")
x = np.ones((4, 128), np.float32)
for _ in range(20):
    y = tee.infer(h, {"input": x})["output"]
print(float(y.sum()), flush=True)
sys.stdin.readline()
"""

HOLDER = r"""
import sys
data = b"x" + sys.stdin.buffer.read(int(sys.argv[1]))  # odd offset: not 8-aligned
print("held", flush=True)
sys.stdin.buffer.readline()
"""


def test_no_plaintext_in_files_or_tee_client_process_memory(make_device, make_package, publisher: Publisher,
                                                tmp_path: Path) -> None:
    device: Device = make_device()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    tee = TeeProcess(device, env=env).start()
    procs: list[subprocess.Popen[str]] = []
    try:
        pkg = make_package(mlp_model(dim=128, layers=3, seed=11), directory=device.layout.cache)
        index = PlaintextIndex(pkg.payload)
        assert len(index.keys) > 100_000

        installer = subprocess.Popen([sys.executable, "-c", INSTALLER, str(device.socket), str(pkg.path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        procs.append(installer)
        evidence = Evidence.from_json(json.loads(installer.stdout.readline()))  # type: ignore[union-attr]
        installer.stdin.write(release_key(evidence, pkg, publisher, device.manufacturer_ca) + "\n")  # type: ignore[union-attr]
        installer.stdin.flush()  # type: ignore[union-attr]
        assert installer.stdout.readline().strip() == "1.0.0"  # type: ignore[union-attr]

        runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(device.socket)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        procs.append(runner)
        assert re.fullmatch(r"-?[0-9.e+]+", runner.stdout.readline().strip())  # type: ignore[union-attr]

        assert scan_process(installer.pid, index) == []
        assert scan_process(runner.pid, index) == []
        assert scan_files([device.layout.root, device.layout.cache, tmpdir], index) == []

        # positive control: a process that holds the plaintext is found
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(len(pkg.payload))], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE)
        procs.append(holder)  # type: ignore[arg-type]
        holder.stdin.write(pkg.payload)  # type: ignore[union-attr]
        holder.stdin.flush()  # type: ignore[union-attr]
        assert holder.stdout.readline().strip() == b"held"  # type: ignore[union-attr]
        assert scan_process(holder.pid, index) != []
    finally:
        for p in procs:
            p.kill()
            p.wait()
        tee.stop()


READ_ONLY_FILE_HOLDER = r"""
import mmap, os, sys
path = sys.argv[1]
with open(path, "rb") as f:
    held = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)  # a read-only file mapping...
os.unlink(path)  # ...of a file no longer on disk (no file scan finds it)
print("held", flush=True)
sys.stdin.readline()
"""

TRUNCATED_MAPPING = r"""
import mmap, os, sys
path = sys.argv[1]
with open(path, "r+b") as f:
    held = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    f.truncate(0)  # the mapping stays, its pages cannot be read any more (SIGBUS / EIO)
print("held", flush=True)
sys.stdin.readline()
"""


def _start(script: str, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
    return proc


def test_scanner_finds_read_only_file_mappings_and_refuses_unreadable_ones(tmp_path: Path) -> None:
    """The controls the previous scanner failed: it skipped read-only file-backed mappings and
    mappings it could not read, so a copy in either went unseen."""
    plaintext = os.urandom(256 * 1024)
    index = PlaintextIndex(plaintext)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        (tmp_path / "copy.bin").write_bytes(plaintext)
        procs.append(_start(READ_ONLY_FILE_HOLDER, str(tmp_path / "copy.bin")))
        assert scan_process(procs[-1].pid, index) != []

        (tmp_path / "gone.bin").write_bytes(plaintext)
        procs.append(_start(TRUNCATED_MAPPING, str(tmp_path / "gone.bin")))
        with pytest.raises(UnreadableMapping):
            scan_process(procs[-1].pid, index)
    finally:
        for p in procs:
            p.kill()
            p.wait()
