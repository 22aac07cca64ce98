"""Root of the ``edb`` command.

Subcommand groups live next to the code they drive and are imported lazily, so ``edb --help``
stays fast and a device image that lacks the cloud extras still runs ``edb tee serve``.
Add a group by adding one line to ``_GROUPS``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from edb import __version__
from edb.errors import EdbError

# name -> "module:attribute" of a click command or group
_GROUPS: dict[str, tuple[str, str]] = {
    "package": ("edb.cli.package", "Build, inspect, verify and re-wrap confidential packages (.cpk)."),
    "pki": ("edb.cli.pki", "Local development PKI (publisher root and signing certificate)."),
    "device": ("edb_tee.cli", "Provision a simulated device (manufacturer CA, attestation key)."),
    "tee": ("edb_tee.cli", "Run and inspect the TEE-simulated region."),
    "keyvault": ("edb_cloud.keyvault_cli", "KEK and signing keys in Azure Key Vault; release policy."),
    "keyrelease": ("key_release_service.cli", "Run the key release service locally."),
    "local": ("edb_local.cli", "Start, stop and inspect the local stack of Azure stand-ins."),
    "images": ("edb_local.images.cli", "Build the module images (amd64, arm64) without a registry."),
    "monitor": ("edb_local.hub.cli", "Print upstream messages, like `az iot hub monitor-events`."),
    "twin": ("edb_local.hub.cli", "Show module twins."),
    "cloud": ("edb_cloud.cli", "Orchestrator: train, build, publish, deploy, roll out, status."),
    "demo": ("edb_cloud.demo", "Run the whole blueprint end to end on the local stack."),
    "fleet": ("edb_local.fleet.cli", "Simulate many edge devices on this machine (start, status, down)."),
    "demo-vision": ("edb_cloud.demo_vision", "A pretrained vision model served to a camera module over the OIP."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = _GROUPS.get(cmd_name)
        if spec is None:
            return None
        module_name, _ = spec
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return _unavailable(cmd_name, module_name)
            raise
        command = getattr(module, cmd_name.replace("-", "_"), None)
        if not isinstance(command, click.Command):
            return _unavailable(cmd_name, module_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in sorted(_GROUPS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, module_name: str) -> click.Command:
    @click.command(name=name, help=f"(not available: {module_name} is not installed)")
    def _cmd() -> None:
        raise click.ClickException(f"`edb {name}` is not available in this installation ({module_name})")

    return _cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edb")
def root() -> None:
    """edb: confidential ONNX model delivery to Azure IoT Edge devices with a TEE."""


def cli(argv: list[str] | None = None) -> Any:
    """Console entry point. Library errors become a one-line message and exit code 2."""
    try:
        result = root.main(args=argv, standalone_mode=False)
        if isinstance(result, int) and not isinstance(result, bool):
            sys.exit(result)
        return result
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdbError as exc:
        click.echo(f"error: {exc.code}: {exc.message}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    cli()
