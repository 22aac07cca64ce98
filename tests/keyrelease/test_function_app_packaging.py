"""The Functions app's dependencies: our library only as a file built into the app folder, every
other requirement a public package pinned to the version the tests run with; and the built wheel
really serves the app (imported with no access to the project's source tree)."""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

APP = Path(__file__).resolve().parents[2] / "cloud" / "key_release"
sys.path.insert(0, str(APP))
import build_function_app  # noqa: E402 - the app folder's build script

OWN_DISTRIBUTIONS = {"enclave-device-blueprint", "edb-key-release-lib"}
PURELIB = Path(sysconfig.get_paths()["purelib"])


def requirement_lines() -> list[str]:
    lines = (APP / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def pinned() -> dict[str, str]:
    out = {}
    for line in requirement_lines():
        if not line.startswith("./"):
            req = Requirement(line)
            (spec,) = req.specifier
            out[canonicalize_name(req.name)] = spec.version
    return out


def test_requirements_name_no_unpinned_or_non_public_package() -> None:
    """The old file listed `enclave-device-blueprint` (not on PyPI: anyone could publish it there)."""
    lines = requirement_lines()
    paths = [line for line in lines if line.startswith("./")]
    assert paths == [f"./wheels/{build_function_app.wheel_filename(build_function_app.library_version())}"]
    for line in lines:
        assert not line.startswith("-"), f"no pip options (index URLs, find-links): {line}"
        if line in paths:
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in OWN_DISTRIBUTIONS, f"{line}: our code comes from the wheel file, never by name"
        assert not req.url and not req.extras and req.marker is None, line
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version, f"unpinned: {line}"
        # a public package the tests ran against, at exactly that version
        assert md.version(name) == specs[0].version, f"{line}: the tests run {name} {md.version(name)}"


def _requirement_closure(names: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen or not _installed(name):  # (an optional dependency not installed here)
            continue
        seen.add(name)
        for text in md.requires(name) or []:
            todo.append(canonicalize_name(Requirement(text).name))
    return seen


def _installed(name: str) -> bool:
    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True


def test_pins_cover_every_distribution_the_app_imports() -> None:
    code = ("import sys; before = set(sys.modules); import function_app; new = set(sys.modules) - before; "
            "print('\\n'.join(sorted({getattr(sys.modules[m], '__file__', None) or '' for m in new})))")
    result = subprocess.run([sys.executable, "-c", code], cwd=APP, capture_output=True, text=True, check=True)
    files = {os.path.normpath(f) for f in result.stdout.split()}
    top_levels = {Path(f).relative_to(PURELIB).parts[0] for f in files if Path(f).is_relative_to(PURELIB)}
    candidates = {dist for top in top_levels for dist in md.packages_distributions().get(top, [])}
    owner = {}  # installed file -> its distribution (namespace packages such as azure.* share a top level)
    for name in candidates:
        dist = md.distribution(name)
        for record in dist.files or []:
            owner[os.path.normpath(str(dist.locate_file(record)))] = canonicalize_name(name)
    imported = {owner[f] for f in files if f in owner}
    covered = _requirement_closure(set(pinned()))
    missing = imported - covered - OWN_DISTRIBUTIONS
    assert not missing, f"the app imports {sorted(missing)}, which requirements.txt does not bring"
    assert {"azure-functions", "azure-keyvault-keys", "azure-keyvault-secrets", "cryptography", "jwcrypto"} <= imported


def test_the_built_wheel_serves_the_app(tmp_path: Path) -> None:
    wheel = build_function_app.build(tmp_path / "wheels")
    assert wheel.name == build_function_app.wheel_filename(build_function_app.library_version())
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:  # a pure-Python wheel installs by unpacking
        metadata = zf.read(f"{wheel.name.split('-py3')[0]}.dist-info/METADATA").decode()
        assert "Requires-Dist" not in metadata  # every dependency is a pin in requirements.txt
        assert all(name.startswith(("edb/", "edb_key_release_lib-")) for name in zf.namelist())
        zf.extractall(site)
    # -S: no site hooks, so the project's editable install (its path finder) is not there: the app
    # must run from its own folder, the unpacked wheel and the public packages alone
    public = str(PURELIB)
    code = ("import sys; sys.path[:0] = sys.argv[1:]; import function_app, edb, key_release_service.service; "
            "print(edb.__file__); print(sorted(f.get_function_name() for f in function_app.app.get_functions()))")
    result = subprocess.run([sys.executable, "-S", "-c", code, str(APP), str(site), public], cwd=tmp_path,
                            capture_output=True, text=True, check=True)
    edb_file, functions = result.stdout.splitlines()
    assert Path(edb_file).is_relative_to(site)
    assert functions == "['ProvisionKey', 'WrapKey', 'nonce', 'release']"
