"""``python -m edb_local ...`` is ``edb local ...``."""

from edb_local.cli import local

if __name__ == "__main__":
    local()
