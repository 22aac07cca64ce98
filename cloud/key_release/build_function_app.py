"""Build the project's package library (``edb``) as a wheel into the Functions app folder.

    python cloud/key_release/build_function_app.py          # -> cloud/key_release/wheels/<the wheel>

The Azure Functions app (this folder) runs ``function_app.py`` and ``key_release_service/`` from
its own root, plus our library ``edb`` (attestation, cpk, keys, pki). ``requirements.txt`` installs
that library by relative path, ``./wheels/edb_key_release_lib-<version>-py3-none-any.whl``, and
pins every public dependency by exact version. Nothing in it is a name pip could look up on an
index and get from someone else (dependency confusion): the library is a file or nothing.

The wheel holds only ``shared/edb`` and declares no dependencies (they are the pins in
requirements.txt), so the app does not pull the device and orchestrator dependencies of the whole
project (ONNX Runtime, scikit-learn, the IoT SDKs). Built with the standard tools (``pip wheel``
over setuptools and ``wheel``, no build isolation, so no download); see docs/key-release.md for the
deploy steps.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
REPO = APP_DIR.parent.parent
LIBRARY = REPO / "shared" / "edb"
DIST_NAME = "edb-key-release-lib"
WHEEL_DIR = "wheels"

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "{version}"
description = "The Enclave Device Blueprint package library (edb), for the key release Functions app"
requires-python = ">=3.11"
dependencies = []

[tool.setuptools.packages.find]
where = ["src"]
"""


def library_version() -> str:
    match = re.search(r'^__version__ = "([^"]+)"$', (LIBRARY / "__init__.py").read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"no __version__ in {LIBRARY / '__init__.py'}")
    return match.group(1)


def wheel_filename(version: str) -> str:
    return f"{DIST_NAME.replace('-', '_')}-{version}-py3-none-any.whl"


def build(out_dir: Path) -> Path:
    """Build the wheel into ``out_dir`` (replacing an older one) and return its path."""
    version = library_version()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        shutil.copytree(LIBRARY, project / "src" / "edb",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
        (project / "pyproject.toml").write_text(_PYPROJECT.format(name=DIST_NAME, version=version))
        built = Path(tmp) / "dist"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--no-cache-dir", "--quiet", "-w", str(built), str(project)], check=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})  # setuptools' "beta" notice
        (wheel,) = built.glob("*.whl")
        if wheel.name != wheel_filename(version):
            raise SystemExit(f"built {wheel.name}, expected {wheel_filename(version)}")
        for old in out_dir.glob(f"{DIST_NAME.replace('-', '_')}-*.whl"):
            old.unlink()
        return Path(shutil.copy2(wheel, out_dir / wheel.name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=APP_DIR / WHEEL_DIR, help="default: cloud/key_release/wheels")
    wheel = build(parser.parse_args().out)
    print(wheel)


if __name__ == "__main__":
    main()
