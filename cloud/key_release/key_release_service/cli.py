"""``edb keyrelease ...``: run the key release service locally and read its audit log."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import click

from key_release_service.config import ServiceConfig
from key_release_service.host import KeyReleaseHost
from key_release_service.service import KeyReleaseService


@click.group(name="keyrelease")
def keyrelease() -> None:
    """Run the key release service locally (same handlers as the Azure Functions app)."""


@keyrelease.command()
@click.option("--address", required=True, help="loopback address to bind, e.g. 127.0.0.8")
@click.option("--port", type=int, default=7071, show_default=True, help="0 picks a free port")
@click.option("--cert", type=click.Path(exists=True, path_type=Path), required=True, help="server certificate PEM")
@click.option("--key", type=click.Path(exists=True, path_type=Path), required=True, help="server key PEM")
def serve(address: str, port: int, cert: Path, key: Path) -> None:
    """Serve over HTTPS until SIGTERM/SIGINT. Settings come from EDB_* environment variables
    (see docs/key-release.md); prints {"ready": true, "url": ...} when listening."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    config = ServiceConfig.from_env()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        host = KeyReleaseHost(KeyReleaseService.from_config(config), address=address, port=port, cert=cert, key=key)
        await host.start()
        print(json.dumps({"ready": True, "url": host.url, "legacy": config.legacy_enabled}), flush=True)
        await stop.wait()
        await host.stop()

    asyncio.run(run())


@keyrelease.command()
@click.argument("audit_file", type=click.Path(exists=True, path_type=Path))
@click.option("--device", help="only this device id")
@click.option("--package", help="only this package id")
@click.option("--denied", is_flag=True, help="only denials and errors")
def audit(audit_file: Path, device: str | None, package: str | None, denied: bool) -> None:
    """Filter an audit log (one JSON object per line) and print matching lines."""
    with audit_file.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if device and rec.get("device") != device:
                continue
            if package and rec.get("package") != package:
                continue
            if denied and rec.get("decision") == "allow":
                continue
            click.echo(line.rstrip("\n"))
