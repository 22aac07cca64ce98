"""``edb pki``: the local development publisher PKI."""

from __future__ import annotations

import click

from edb.cli._common import default_pki_dir, emit_json, handles_errors
from edb.pki.devpki import init_publisher_pki


@click.group(name="pki")
def pki() -> None:
    """Local development PKI (publisher root and signing certificate, local KEK)."""


@pki.command(name="init")
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="Default: $EDB_STATE_DIR/pki or .edb/pki.")
@click.option("--organization", default="EDB Development Publisher", show_default=True)
@click.option("--kek-bits", type=click.Choice(["2048", "3072", "4096"]), default="3072", show_default=True,
              help="RSA size of the local KEK.")
@click.option("--force", is_flag=True, help="Replace an existing PKI (packages signed by it stop verifying).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handles_errors
def init(directory: str | None, organization: str, kek_bits: str, force: bool, as_json: bool) -> None:
    """Create a publisher root CA, a signing certificate (codeSigning) and a local RSA-3072 KEK."""
    made = init_publisher_pki(directory or default_pki_dir(), organization=organization, force=force,
                              kek_bits=int(kek_bits))
    files = {"rootCert": made.root_cert, "rootKey": made.root_key, "signerCert": made.signer_cert,
             "signerKey": made.signer_key, "kek": made.kek, "kekPublic": made.kek_public}
    if as_json:
        emit_json({"ok": True, "dir": str(made.directory), "kid": made.load_kek().kid,
                   **{k: str(v) for k, v in files.items()}})
    else:
        click.echo(f"publisher PKI in {made.directory} (keys mode 0600):")
        for label, path in files.items():
            click.echo(f"  {label:<11} {path}")
        click.echo(f"  KEK kid     {made.load_kek().kid}")
        click.echo("pin root.pem on devices and in the key release service")
