"""No plaintext and no key outside the TEE, on the real local stack with the REAL modules.

One stack: a ~3.6 MB model (random weights, so every part of it is distinctive) is published,
installed by the real package_installer through the key release service, and served by the real
inference_runner from the simulated sensor's traffic. Then:

1. the package_installer's and the inference_runner's processes (and their children): every
   readable mapping of /proc/<pid>/mem holds no 64-byte window of the plaintext model;
2. every file under the stack's state directory, which holds the stack's temp dir (TMPDIR of every
   stack process, checked in /proc/<pid>/environ), holds none either;
3. positive control: the same scanner finds the plaintext in the TEE process's memory;
4. the TEE's log, over install, load, inference and a TEE restart (the runner reloads the model
   from sealed storage), holds no plaintext window and no key: neither the package's DEK (unwrapped
   here from the package with the publisher's KEK in the stack's Key Vault) nor the sealed-storage
   keys (HUK, SSK, RPMB key and each trusted app's TSK, derived here from the simulated HUK file
   with the TEE's own KeyHierarchy), raw, hex or base64.

Sampling (the plaintext is indexed, not every byte offset of it): every STRIDE bytes of the
plaintext, the 8-byte strings at the next 8 offsets are indexed, so wherever a copy lies in memory,
one of them starts on an 8-aligned word of it; a hit is confirmed over 64 bytes. Any copy of
STRIDE + 72 = 328 contiguous plaintext bytes or more (so any 4 KiB) is found, at any alignment.
Windows with fewer than 32 distinct byte values (zero padding, protobuf field runs) are not
indexed: they occur everywhere and say nothing about where the model went.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import signal
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from cryptography import x509
from e2e_stack import DEVICE, INSTALLER, NAME, RUNNER, E2EStack, edb, wait_for
from onnx import TensorProto, helper, numpy_helper

from edb.schemas import PackageState

STRIDE = 256
WINDOW = 64
CHUNK = 32 << 20  # memory is read in pieces of this size, overlapping by OVERLAP (8-aligned)
OVERLAP = 72
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
UNREADABLE_OK = ("[vvar]", "[vsyscall]", "[vvar_vclock]")


def wide_model(hidden: int = 12288, seed: int = 2026) -> bytes:
    """input (N, 64) -> MatMul+Add (hidden) -> Relu -> MatMul+Add (10) -> logits: 3.6 MB of weights."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (64, hidden)), ("b1", (hidden,)), ("w2", (hidden, 10)), ("b2", (10,)))]
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["o0"]),
             helper.make_node("Add", ["o0", "b2"], ["logits"])]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _bucket(words: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (words * _GOLDEN) >> np.uint64(40)


class SampledIndex:
    """8-byte keys at offsets s..s+7 for every s = 0, STRIDE, 2*STRIDE... (see the module docstring)."""

    def __init__(self, plaintext: bytes) -> None:
        self.plaintext = plaintext
        p = np.frombuffer(plaintext, np.uint8)
        starts = np.arange(0, len(p) - WINDOW - 16, STRIDE)
        rows = np.lib.stride_tricks.sliding_window_view(p, WINDOW + 8)[starts]
        distinct = 1 + np.count_nonzero(np.diff(np.sort(rows, axis=1), axis=1), axis=1)
        starts = starts[distinct >= 32]
        offsets = (starts[:, None] + np.arange(8)).ravel()
        keys = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(p, 8)[offsets]).view("<u8").ravel()
        self.sampled = len(starts)
        self.offset_of = dict(zip(keys.tolist(), offsets.tolist(), strict=True))
        self.keys = np.unique(keys)
        self.bitmap = np.zeros(1 << 24, dtype=bool)
        self.bitmap[_bucket(self.keys)] = True

    def find(self, data: bytes | bytearray | memoryview) -> int | None:
        buf = memoryview(data)
        words = np.frombuffer(buf, dtype="<u8", count=len(buf) // 8)
        cand = np.nonzero(self.bitmap[_bucket(words)])[0]
        if not len(cand):
            return None
        values = words[cand]
        at = np.minimum(np.searchsorted(self.keys, values), len(self.keys) - 1)
        for i in cand[self.keys[at] == values].tolist():
            pos, off = 8 * i, self.offset_of[int(words[i])]
            if bytes(buf[pos:pos + WINDOW]) == self.plaintext[off:off + WINDOW]:
                return pos
        return None


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def scan_process(pid: int, index: SampledIndex) -> tuple[list[str], int]:
    """Every readable mapping (anonymous, heap, stacks, file-backed, shared): (hits, bytes scanned)."""
    hits, scanned, unreadable = [], 0, []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            parts = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            path = parts[5].strip() if len(parts) > 5 else ""
            if "r" not in parts[1] or path in UNREADABLE_OK:
                continue
            pos = start
            while pos < end:
                size = min(CHUNK + OVERLAP, end - pos)
                try:
                    mem.seek(pos)
                    data = mem.read(size)
                except OSError:
                    unreadable.append(line.strip())
                    break
                scanned += len(data)
                if index.find(data) is not None:
                    hits.append(f"{pid}: {line.strip()}")
                    break
                pos += CHUNK
    assert not unreadable, f"mappings of {pid} that could not be read: {unreadable[:5]}"
    return hits, scanned


def scan_files(root: Path, index: SampledIndex) -> tuple[list[str], int]:
    hits, count = [], 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # a temporary file that went away while we walked
                continue
            count += 1
            if index.find(data) is not None:
                hits.append(str(path))
    return hits, count


def forms(key: bytes) -> list[bytes]:
    """How a key could show up in a text log."""
    b64 = base64.b64encode(key)
    return [key, key.hex().encode(), key.hex().upper().encode(), b64, b64.rstrip(b"="),
            base64.urlsafe_b64encode(key).rstrip(b"=")]


def package_dek_and_payload(stack: E2EStack, package: Path) -> tuple[bytes, bytes]:
    """What the publisher can do: unwrap the DEK with its KEK (in the stack's Key Vault), decrypt."""
    from edb.cpk import decrypt_payload, open_package, verify_package
    from edb_cloud.publisher import load_publisher, providers

    roots = x509.load_pem_x509_certificates((stack.state_dir / "pki" / "root.pem").read_bytes())
    with open_package(package) as reader:
        verified = verify_package(reader, trust_roots=roots, now=dt.datetime.now(dt.UTC), check_payload_digest=False)
        kek, _ = providers(stack.config, load_publisher(stack.config))
        dek = kek.unwrap(verified.manifest.wrapped_dek)
        plaintext = bytearray(verified.manifest.plaintext_size)
        decrypt_payload(verified, dek, plaintext)
    return bytes(dek), bytes(plaintext)


def sealed_storage_keys(device_dir: Path) -> list[bytes]:
    from edb.tee.commands import DEVICE_TA, INSTALLER_TA, RUNNER_TA
    from edb_tee.keys import KeyHierarchy

    huk = (device_dir / "tee" / "huk").read_bytes()
    keys = KeyHierarchy(huk, device_dir.name)
    return [huk, keys._ssk, keys.rpmb_key, *(keys.tsk(ta) for ta in (DEVICE_TA, INSTALLER_TA, RUNNER_TA))]


def served(stack: E2EStack) -> int:
    stats: dict[str, Any] = stack.hub.module_twin(DEVICE, RUNNER).reported.get("stats") or {}
    return int(stats.get("count", 0)) - int(stats.get("errors", 0))


def tee_loaded(stack: E2EStack) -> list[Any]:
    from edb.errors import EdbError
    from edb.tee import TeeClient

    try:
        with TeeClient(stack.config.require("EDB_TEE_SOCKET", "TEE socket"), reconnect_s=0) as tee:
            loaded: list[Any] = tee.status()["models"]["loaded"]
            return loaded
    except EdbError:
        return []


def test_no_plaintext_or_key_outside_the_tee(stack_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack_tmp = stack_dir / "tmp"
    stack_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(stack_tmp))  # inherited by every stack process (and the modules)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this process is the cloud side: not scanned
    model = tmp_path / "wide.onnx"  # outside the state dir: the publisher's plaintext
    model.write_bytes(wide_model())

    stack = E2EStack(stack_dir)
    stack.start(model, (("1.0.0", 1),))
    stack.rollout(stack.releases["1.0.0"])
    stack.wait_state("1.0.0", PackageState.INSTALLED)
    stack.wait_serving("1.0.0")
    wait_for("the runner to answer inputs through the TEE", lambda: served(stack) >= 5, 30)

    dek, plaintext = package_dek_and_payload(stack, stack_dir / "cloud" / "packages" / f"{NAME}-1.0.0.cpk")
    assert len(plaintext) > 3_500_000
    index = SampledIndex(plaintext)
    assert index.sampled > 0.95 * len(plaintext) / STRIDE  # random weights: nearly every sample kept

    pids = {name: stack.pid(name) for name in (f"module.{INSTALLER}", f"module.{RUNNER}", "tee")}
    assert all(pids.values()), pids
    for pid in pids.values():
        assert f"TMPDIR={stack_tmp}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")

    for name in (f"module.{INSTALLER}", f"module.{RUNNER}"):
        for pid in descendants(pids[name]):  # type: ignore[arg-type]
            hits, scanned = scan_process(pid, index)
            assert hits == [], f"plaintext in {name}: {hits}"
            assert scanned > 20 << 20  # a whole Python process was read, not an empty one
    hits, count = scan_files(stack_dir, index)
    assert hits == [] and count > 20, hits
    # positive control: the TEE process holds the plaintext (decrypted, loaded) and the scanner says so
    tee_hits, _ = scan_process(pids["tee"], index)  # type: ignore[arg-type]
    assert tee_hits

    # a TEE restart: the runner reconnects and the model is reloaded from sealed storage
    before = served(stack)
    stack.kill("tee", signal.SIGTERM)
    stack.up()
    assert stack.pid("tee") != pids["tee"]
    wait_for("the model to be reloaded in the restarted TEE", lambda: tee_loaded(stack), 30)
    wait_for("the runner to answer again", lambda: served(stack) >= before + 5, 30)

    # the one-user stack runs on the single-uid allow-list: its status says the roles are not separated
    status = json.loads(edb("local", "status", "--state-dir", str(stack_dir), "--json").stdout)
    tee_row = next(c for c in status["components"] if c["name"] == "tee")
    assert tee_row["state"] == "running" and "single uid" in tee_row["detail"], tee_row

    log = (stack_dir / "logs" / "tee.log").read_bytes()
    assert b"development default" in log  # ... and so does the TEE's start-up log
    assert log.count(b"listening on") >= 2  # both runs of the TEE are in this log
    assert index.find(log) is None
    secrets = [("DEK", dek)] + [(f"sealed-storage key {i}", k) for i, k in enumerate(sealed_storage_keys(
        stack_dir / "devices" / DEVICE))]
    for what, key in secrets:
        assert len(key) == 32
        leaked = [form for form in forms(key) if form in log]
        assert not leaked, f"{what} is in the TEE's log"
