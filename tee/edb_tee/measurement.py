"""The TEE measurement: SHA-256 over the service's own code, its runtime and its measured config.

Covered, in this order, each item length-prefixed:
1. every ``*.py`` file of the packages the service runs (``edb_tee``, and from the library
   ``edb.tee``, ``edb.attestation``, ``edb.cpk``, ``edb.pki``, ``edb.onnx_layout``,
   ``edb.errors``), by path relative to its package, sorted;
2. the runtime: Python implementation and version, and the versions of onnxruntime, cryptography,
   jwcrypto and numpy (a different ONNX Runtime is different code handling plaintext);
3. the canonical JSON of the configuration's ``measured`` section (svn, legacy flag, limits).

It is stable across runs and restarts of the same installation, and changes when any of these
change. On hardware this is the boot chain's measurement of the TEE OS and trusted apps; here it is
computed by the service over its own files at start-up (so root can lie about it: a simulation
cannot attest itself, only be consistent).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import platform
from pathlib import Path

from edb_tee.config import MeasuredConfig

MEASURED_PACKAGES = ("edb_tee", "edb.tee", "edb.attestation", "edb.cpk", "edb.pki", "edb.onnx_layout", "edb.errors")
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "cryptography", "jwcrypto", "numpy")


def code_files() -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for name in MEASURED_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise RuntimeError(f"cannot measure {name}: not importable")
        if spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                root = Path(location)
                for path in sorted(root.rglob("*.py")):
                    out.append((f"{name}/{path.relative_to(root).as_posix()}", path))
        elif spec.origin:
            out.append((f"{name}.py", Path(spec.origin)))
    return sorted(out)


def runtime_description() -> dict[str, str]:
    desc = {"python": f"{platform.python_implementation()} {platform.python_version()}"}
    for dist in RUNTIME_DISTRIBUTIONS:
        try:
            desc[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            desc[dist] = "absent"
    return desc


def _item(h: hashlib._Hash, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def measure(config: MeasuredConfig) -> str:
    h = hashlib.sha256(b"edb-tee-measurement-v1\0")
    for rel, path in code_files():
        _item(h, rel.encode())
        _item(h, path.read_bytes())
    _item(h, json.dumps(runtime_description(), sort_keys=True).encode())
    _item(h, json.dumps(config.to_json(), sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()
