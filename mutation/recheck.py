"""Re-check mutants of a finished ``make mutate`` run against the CURRENT tests (mutmut's own run
uses the tests as they were when it started): each named mutant is switched on with
``MUTANT_UNDER_TEST`` in the staged ``mutants/`` copy and the given test files (from the worktree)
are run; a failing run kills it. Also runs once with no mutant, which must pass.

Usage: ``python mutation/recheck.py STAGE_DIR --tests tests/a.py tests/b.py -- NAME ...``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(mutants_dir: Path, tests: list[str], mutant: str) -> bool:
    """True when the tests pass with ``mutant`` switched on."""
    env = {**os.environ, "MUTANT_UNDER_TEST": mutant, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider",
                             *[str(ROOT / t) for t in tests]], cwd=mutants_dir, env=env, capture_output=True)
    return result.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", type=Path)
    parser.add_argument("--tests", nargs="+", required=True)
    parser.add_argument("mutants", nargs="+")
    args = parser.parse_args()
    mutants_dir = args.stage / "mutants"
    if not run(mutants_dir, args.tests, "none"):
        print("the tests fail without any mutant: fix that first")
        return 2
    survivors = 0
    for name in args.mutants:
        passed = run(mutants_dir, args.tests, name)
        survivors += passed
        print(f"{name}: {'survived' if passed else 'killed'}", flush=True)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
