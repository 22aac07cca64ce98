"""``python -m edb_local.keyvault serve ...``: run the Key Vault stand-in until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import click

from edb_local.keyvault.server import DEFAULT_CLIENTS, KeyVaultStandIn


@click.group()
def main() -> None:
    """The local Key Vault stand-in."""


@main.command()
@click.option("--state-dir", type=click.Path(path_type=Path), required=True, help="e.g. .edb/keyvault")
@click.option("--address", required=True, help="loopback address to bind, e.g. 127.0.0.7")
@click.option("--port", type=int, default=8443, show_default=True, help="0 picks a free port")
@click.option("--cert", type=click.Path(exists=True, path_type=Path), required=True, help="server certificate PEM")
@click.option("--key", type=click.Path(exists=True, path_type=Path), required=True, help="server key PEM")
@click.option("--ca", type=click.Path(exists=True, path_type=Path), required=True,
              help="the stack CA (written into the credential files for clients)")
@click.option("--verbose", is_flag=True, help="log every request (method, path, status; never bodies)")
def serve(state_dir: Path, address: str, port: int, cert: Path, key: Path, ca: Path, verbose: bool) -> None:
    """Serve until SIGTERM or SIGINT; prints one JSON line {"ready": true, "url": ...} when listening."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    vault = KeyVaultStandIn(state_dir, address=address, port=port, cert_path=cert, key_path=key, ca_path=ca)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await vault.start()
        print(json.dumps({"ready": True, "url": vault.url,
                          "credentials": {c: str(vault.credential_path(c)) for c in DEFAULT_CLIENTS}}),
              flush=True)
        await stop.wait()
        await vault.stop()

    asyncio.run(run())


if __name__ == "__main__":
    main()
