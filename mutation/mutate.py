"""``make mutate``: mutation testing (mutmut) of the security-critical modules with their tests.

mutmut 3 expects importable packages at the top of the directory it runs in, so this script builds
a staging directory (``.mutate/``) whose top level holds the project's packages as symlinks into
the worktree (``edb``, ``edb_tee``, ``package_installer``, ``key_release_service``, ``edb_local``)
plus ``tests`` and a ``pyproject.toml`` with the ``[tool.mutmut]`` section below. mutmut copies
them to ``.mutate/mutants/``, puts that first on ``sys.path`` (the editable install's finder comes
after it) and runs the chosen tests against every mutant of the chosen files. Nothing in the
worktree is modified.

Usage: ``python mutation/mutate.py [GROUP ...]`` (default: every group), then the score and every
survivor are printed; ``.mutate/mutants`` keeps the results (``mutmut results`` / ``mutmut show``
there).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "edb": "shared/edb",
    "edb_tee": "tee/edb_tee",
    "package_installer": "modules/package_installer",
    "key_release_service": "cloud/key_release/key_release_service",
    "edb_local": "local/edb_local",
}

#: group -> (files to mutate, relative to the staging root; tests that pin them)
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "package": (
        ["edb/cpk/policy.py", "edb/cpk/signed.py", "edb/keys/low_s.py"],
        ["tests/package/test_package_security_pins.py", "tests/package/test_low_s.py", "tests/package/test_hostile.py",
         "tests/package/test_signed_manifest_json.py"],
    ),
    "pki": (
        ["edb/pki/chain.py"],
        ["tests/package/test_pki_chain.py", "tests/package/test_package_security_pins.py"],
    ),
    "key-release": (
        ["key_release_service/policy.py", "key_release_service/device.py", "key_release_service/manifest.py"],
        ["tests/keyrelease/test_release_security_pins.py", "tests/keyrelease/test_core_units.py",
         "tests/keyrelease/test_release_handlers.py"],
    ),
    "installer": (
        ["package_installer/sources.py", "package_installer/downloader.py"],
        ["tests/modules/test_installer_security_pins.py", "tests/modules/test_downloader.py"],
    ),
    "tee-access": (
        ["edb_tee/access.py"],
        ["tests/tee/test_access_decisions.py", "tests/tee/test_roles_config.py"],
    ),
    "hub-auth": (
        ["edb_local/hub/sas.py"],
        ["tests/hub/test_sas_decisions.py", "tests/hub/test_sas_topics.py"],
    ),
}


DO_NOT_MUTATE = [r"^\s*raise ", r"^\s*log\.\w+\(", r"^\s*logger\.\w+\(", r"^\s*\"\"\"", r"^\s*warnings\.warn\("]


def stage(files: list[str], tests: list[str], stage_dir: Path) -> None:
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir()
    for name, rel in PACKAGES.items():
        (stage_dir / name).symlink_to(ROOT / rel, target_is_directory=True)
    (stage_dir / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
    pytest_ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    lines = ["[tool.mutmut]",
             f"source_paths = {_toml(sorted({f.split('/')[0] for f in files}))}",
             f"only_mutate = {_toml(files)}",
             f"pytest_add_cli_args_test_selection = {_toml(tests)}",
             f"pytest_add_cli_args = {_toml(['-p', 'no:cacheprovider', '-p', 'no:xdist', '-q'])}",
             "timeout_multiplier = 5.0",
             # Human-facing text is not a security decision: the statements that raise or log (and
             # their message strings) are not mutated; the conditions that lead to them are.
             f"do_not_mutate_patterns = {_toml(DO_NOT_MUTATE)}",
             "",
             "[tool.pytest.ini_options]"]
    lines += [f"{key} = {_toml(value)}" for key, value in pytest_ini.items() if key != "testpaths"]
    (stage_dir / "pyproject.toml").write_text("\n".join(lines) + "\n")


def _toml(value: object) -> str:
    """TOML for the few value types used here (literal strings: no escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        assert "'" not in value and "\n" not in value
        return f"'{value}'"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(type(value))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", choices=[[], *GROUPS], default=[])
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--stage", type=Path, default=ROOT / ".mutate", help="staging directory (default .mutate)")
    parser.add_argument("--mutants", nargs="*", default=[],
                        help="run only these mutants (names or globs, e.g. the survivors of an earlier run)")
    args = parser.parse_args()
    groups = args.groups or list(GROUPS)
    files = [f for g in groups for f in GROUPS[g][0]]
    tests = sorted({t for g in groups for t in GROUPS[g][1]})
    stage(files, tests, args.stage)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    mutmut = [sys.executable, "-m", "mutmut"]
    run = subprocess.run([*mutmut, "run", "--max-children", str(args.max_children), *args.mutants], cwd=args.stage,
                         env=env)
    results = subprocess.run([*mutmut, "results", "--all", "true"], cwd=args.stage, env=env, capture_output=True,
                             text=True)
    print(results.stdout)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
