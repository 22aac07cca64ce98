"""``python -m edb_tee ...`` is ``edb tee ...`` (used by tests and the local stack)."""

from edb_tee.cli import tee

if __name__ == "__main__":
    tee(prog_name="python -m edb_tee")
