"""The measurement the release policy pins must cover the TEE's code (issue 13 item 10a).

An outside audit changed ``measure()`` to skip the TEE's code files and every TEE, key release and
attestation test still passed. These tests pin the coverage three ways: the file list holds every
``.py`` file of the TEE packages, the digest is recomputed here independently from the documented
algorithm over the files found on disk, and changing one byte of any TEE code file changes it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import edb_tee
from edb_tee import measurement
from edb_tee.config import MeasuredConfig

TEE_ROOT = Path(edb_tee.__file__).parent
TEE_FILES = sorted(p.relative_to(TEE_ROOT).as_posix() for p in TEE_ROOT.rglob("*.py"))


def test_every_tee_code_file_is_listed() -> None:
    listed = {rel for rel, _ in measurement.code_files()}
    assert len(TEE_FILES) >= 15  # the service, its access checks, install path, trusted apps...
    missing = [f"edb_tee/{rel}" for rel in TEE_FILES if f"edb_tee/{rel}" not in listed]
    assert missing == []
    for must in ("edb_tee/access.py", "edb_tee/install.py", "edb_tee/server.py", "edb_tee/measurement.py",
                 "edb.cpk/signed.py", "edb.tee/protocol.py", "edb.attestation/__init__.py"):
        assert must in listed, must


def test_measurement_recomputed_independently() -> None:
    """The module docstring's algorithm, from the files on disk, not from code_files()."""
    import edb.attestation
    import edb.cpk
    import edb.pki
    import edb.tee

    h = hashlib.sha256(b"edb-tee-measurement-v1\0")
    files: list[tuple[str, Path]] = [(f"edb_tee/{rel}", TEE_ROOT / rel) for rel in TEE_FILES]
    for name, module in (("edb.tee", edb.tee), ("edb.attestation", edb.attestation), ("edb.cpk", edb.cpk),
                         ("edb.pki", edb.pki)):
        root = Path(module.__file__).parent  # type: ignore[arg-type]
        files += [(f"{name}/{p.relative_to(root).as_posix()}", p) for p in root.rglob("*.py")]
    import edb.errors
    import edb.onnx_layout
    files += [("edb.onnx_layout.py", Path(edb.onnx_layout.__file__)), ("edb.errors.py", Path(edb.errors.__file__))]
    for rel, path in sorted(files):
        for item in (rel.encode(), path.read_bytes()):
            h.update(len(item).to_bytes(8, "little"))
            h.update(item)
    config = MeasuredConfig()
    for item in (json.dumps(measurement.runtime_description(), sort_keys=True).encode(),
                 json.dumps(config.to_json(), sort_keys=True, separators=(",", ":")).encode()):
        h.update(len(item).to_bytes(8, "little"))
        h.update(item)
    assert measurement.measure(config) == h.hexdigest()


@pytest.mark.parametrize("rel", ["edb_tee/access.py", "edb_tee/install.py", "edb_tee/tas/__init__.py",
                                 "edb.cpk/verify.py"])
def test_one_changed_byte_in_tee_code_changes_the_measurement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              rel: str) -> None:
    real = measurement.code_files()
    assert rel in {r for r, _ in real}
    copies: list[tuple[str, Path]] = []
    for i, (name, path) in enumerate(real):
        copy = tmp_path / f"{i}.py"
        shutil.copyfile(path, copy)
        copies.append((name, copy))
    monkeypatch.setattr(measurement, "code_files", lambda: copies)
    config = MeasuredConfig()
    before = measurement.measure(config)
    target = next(path for name, path in copies if name == rel)
    target.write_bytes(target.read_bytes() + b"\n# patched\n")
    assert measurement.measure(config) != before
