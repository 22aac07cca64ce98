"""``python -m edb_tee ...`` is ``edb tee ...`` (used by tests and the local stack)."""

import sys

import click

from edb.errors import EdbError
from edb_tee.cli import tee

if __name__ == "__main__":
    try:
        tee.main(prog_name="python -m edb_tee", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdbError as exc:
        click.echo(f"error: {exc.code}: {exc.message}", err=True)
        sys.exit(2)
