"""``edb keyvault ...``: KEK and publisher signing key lifecycle, and release policies per package.

Settings (options override): ``EDB_KEYVAULT_URL``; ``EDB_KEYVAULT_CREDENTIAL`` (``default`` =
DefaultAzureCredential, or a stand-in credential file); ``EDB_KEYVAULT_CA`` or ``EDB_CA_CERT`` (PEM
to trust, local stack); read by :meth:`edb_cloud.keyvault.VaultConnection.from_settings`.
They are read from ``<state-dir>/local.env``, ``.env`` and the environment like every ``edb cloud``
command, so after ``edb local up`` no option is needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from edb.errors import EdbError
from edb_cloud.config import CloudConfig
from edb_cloud.keyvault import (
    VaultConnection,
    add_revoked_version,
    disable_version,
    enable_version,
    ensure_kek,
    ensure_signer,
    get_policy,
    list_versions,
    put_policy,
    rotate_kek,
)
from key_release_service.codes import Denied
from key_release_service.policy import build_policy

DEFAULT_KEK = "edb-kek"
DEFAULT_SIGNER = "edb-publisher-signer"


@dataclass
class Ctx:
    connection: VaultConnection | None
    as_json: bool
    error: str | None = None

    def vault(self) -> VaultConnection:
        if self.connection is None:
            raise click.UsageError(self.error or "no Key Vault configured")
        return self.connection


def _emit(ctx: Ctx, result: dict[str, Any], text: str) -> None:
    if ctx.as_json:
        click.echo(json.dumps({"ok": True, **result}, indent=2, default=str))
    else:
        click.echo(text)


def _run(ctx: Ctx, action: Callable[[], tuple[dict[str, Any], str]]) -> None:
    try:
        result, text = action()
    except (EdbError, Denied) as exc:
        if ctx.as_json:
            click.echo(json.dumps({"ok": False, "error": exc.to_dict()}))
            raise SystemExit(2) from exc
        raise
    _emit(ctx, result, text)


@click.group(name="keyvault")
@click.option("--vault-url", help="https://<vault>.vault.azure.net, or the stand-in's URL")
@click.option("--credential", "credential_spec", help="'default' (DefaultAzureCredential) or a credential file")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="PEM bundle to trust (local stack CA)")
@click.option("--state-dir", type=click.Path(path_type=Path), help="local stack state (default .edb)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def keyvault(click_ctx: click.Context, vault_url: str | None, credential_spec: str | None, ca: str | None,
             state_dir: Path | None, as_json: bool) -> None:
    """KEK and signing keys in Azure Key Vault (or the local stand-in); release policy per package."""
    connection = VaultConnection.from_settings(CloudConfig.load(state_dir), vault_url=vault_url,
                                               credential=credential_spec, ca=ca)
    click_ctx.obj = Ctx(connection, as_json, None if connection else
                        "set EDB_KEYVAULT_URL (or --vault-url), or run `edb local up`")


@keyvault.command()
@click.option("--kek-name", default=DEFAULT_KEK, show_default=True)
@click.option("--signer-name", default=DEFAULT_SIGNER, show_default=True)
@click.option("--hsm", is_flag=True, help="HSM-protected keys (Premium vaults)")
@click.pass_obj
def init(ctx: Ctx, kek_name: str, signer_name: str, hsm: bool) -> None:
    """Create the KEK (RSA 3072, wrapKey/unwrapKey) and the signing key (EC P-256, sign/verify) if absent."""
    def action() -> tuple[dict[str, Any], str]:
        client = ctx.vault().key_client()
        kek, kek_new = ensure_kek(client, kek_name, hsm=hsm)
        signer, signer_new = ensure_signer(client, signer_name, hsm=hsm)
        result = {"kek": {"kid": kek.id, "created": kek_new}, "signer": {"kid": signer.id, "created": signer_new}}
        text = (f"KEK     {kek.id} ({'created' if kek_new else 'exists'})\n"
                f"signer  {signer.id} ({'created' if signer_new else 'exists'})")
        return result, text

    _run(ctx, action)


@keyvault.command()
@click.option("--kek-name", default=DEFAULT_KEK, show_default=True)
@click.pass_obj
def rotate(ctx: Ctx, kek_name: str) -> None:
    """New KEK version. Old versions still unwrap their packages until disabled; move packages with
    `edb package rewrap`, then `edb keyvault disable OLD_VERSION`."""
    def action() -> tuple[dict[str, Any], str]:
        key = rotate_kek(ctx.vault().key_client(), kek_name)
        return ({"kid": key.id, "version": key.properties.version},
                f"new KEK version {key.id}\nnext: edb package rewrap ... ; then edb keyvault disable <old version>")

    _run(ctx, action)


@keyvault.command()
@click.argument("version")
@click.option("--key-name", default=DEFAULT_KEK, show_default=True)
@click.pass_obj
def disable(ctx: Ctx, version: str, key_name: str) -> None:
    """Disable a key version (revocation: releases of DEKs wrapped under it stop at once)."""
    _set_enabled(ctx, key_name, version, False)


@keyvault.command()
@click.argument("version")
@click.option("--key-name", default=DEFAULT_KEK, show_default=True)
@click.pass_obj
def enable(ctx: Ctx, version: str, key_name: str) -> None:
    """Re-enable a key version."""
    _set_enabled(ctx, key_name, version, True)


def _set_enabled(ctx: Ctx, key_name: str, version: str, enabled: bool) -> None:
    def action() -> tuple[dict[str, Any], str]:
        v = (enable_version if enabled else disable_version)(ctx.vault().key_client(), key_name, version)
        return v.to_json(), f"{'enabled' if enabled else 'disabled'} {v.kid}"

    _run(ctx, action)


@keyvault.command()
@click.option("--key-name", default=DEFAULT_KEK, show_default=True)
@click.pass_obj
def versions(ctx: Ctx, key_name: str) -> None:
    """List a key's versions, oldest first."""
    def action() -> tuple[dict[str, Any], str]:
        vs = list_versions(ctx.vault().key_client(), key_name)
        lines = [f"{v.version}  {'enabled ' if v.enabled else 'DISABLED'}  {v.created or ''}" for v in vs]
        return {"versions": [v.to_json() for v in vs]}, "\n".join(lines)

    _run(ctx, action)


@keyvault.group()
def policy() -> None:
    """Release policy per package id (a Key Vault secret edb-policy-<package id>)."""


@policy.command(name="set")
@click.argument("package_id")
@click.option("--device", "devices", multiple=True, help="allowed device id (repeatable)")
@click.option("--device-class", "device_classes", multiple=True, help="allowed device class (repeatable)")
@click.option("--min-tee-svn", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--measurement", "measurements", multiple=True, help="allowed TEE measurement, 64 hex (repeatable)")
@click.option("--any-measurement", is_flag=True, help="allow any TEE measurement (weaker; development)")
@click.option("--min-security-version", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--revoked", "revoked", multiple=True, help="package version never to release (repeatable)")
@click.pass_obj
def policy_set(ctx: Ctx, package_id: str, devices: tuple[str, ...], device_classes: tuple[str, ...],
               min_tee_svn: int, measurements: tuple[str, ...], any_measurement: bool, min_security_version: int,
               revoked: tuple[str, ...]) -> None:
    """Replace PACKAGE_ID's policy (takes effect without redeploying the service)."""
    if not measurements and not any_measurement:
        raise click.UsageError("give --measurement HEX (repeatable) or --any-measurement")
    if measurements and any_measurement:
        raise click.UsageError("--measurement and --any-measurement exclude each other")

    def action() -> tuple[dict[str, Any], str]:
        built = build_policy(package_id, devices=devices, device_classes=device_classes, min_tee_svn=min_tee_svn,
                             measurements=None if any_measurement else measurements,
                             min_security_version=min_security_version, revoked_versions=revoked)
        secret_id = put_policy(ctx.vault().secret_client(), built)
        return {"policy": built.to_json(), "secret": secret_id}, f"policy stored as {secret_id}\n{built.dumps()}"

    _run(ctx, action)


@policy.command(name="show")
@click.argument("package_id")
@click.pass_obj
def policy_show(ctx: Ctx, package_id: str) -> None:
    """Print PACKAGE_ID's policy."""
    def action() -> tuple[dict[str, Any], str]:
        found = get_policy(ctx.vault().secret_client(), package_id)
        if found is None:
            raise EdbError(f"no release policy for {package_id}", code="KEY_NOT_FOUND")
        return {"policy": found.to_json()}, found.dumps()

    _run(ctx, action)


@policy.command(name="revoke")
@click.argument("package_id")
@click.argument("version")
@click.pass_obj
def policy_revoke(ctx: Ctx, package_id: str, version: str) -> None:
    """Add VERSION to PACKAGE_ID's revoked versions (keeps the rest of the policy)."""
    def action() -> tuple[dict[str, Any], str]:
        updated = add_revoked_version(ctx.vault().secret_client(), package_id, version)
        return {"policy": updated.to_json()}, f"revoked {package_id} {version}"

    _run(ctx, action)
