"""``edb cloud``: the orchestrator. Train, build, publish, deploy, roll out, roll back, status.

Configuration only (see :mod:`edb_cloud.config`): the same commands drive Azure and the local stack.
Every command takes ``--json`` (one JSON object: ``{"ok": true, ...}`` or ``{"ok": false, "error":
{"code", "message"}}`` with exit status 2).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edb.cli._common import emit_json, handles_errors
from edb.errors import ConfigError
from edb_cloud.config import CloudConfig


def _config(ctx: click.Context) -> CloudConfig:
    config: CloudConfig = ctx.obj
    return config


def _hub(config: CloudConfig) -> Any:
    from edb_cloud.iothub import HubService

    return HubService(config.iothub_connection_string, config.ca_cert)


def _device(config: CloudConfig, device: str | None) -> str:
    device = device or config.device_id
    if not device:
        raise ConfigError("name a device with --device (or set EDB_DEVICE_ID)", code="CONFIG_MISSING")
    return device


def _registry(config: CloudConfig) -> Any:
    from edb_cloud.releases import ReleaseRegistry

    return ReleaseRegistry(config.cloud_dir / "releases.json")


@click.group(name="cloud")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Local state directory (default $EDB_STATE_DIR or .edb); its local.env is read.")
@click.option("--env-file", "env_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Extra KEY=VALUE file(s) (later ones win; the environment wins over all).")
@click.pass_context
def cloud(ctx: click.Context, state_dir: Path | None, env_files: tuple[Path, ...]) -> None:
    """Orchestrator: train, build, publish, deploy, roll out, status."""
    ctx.obj = CloudConfig.load(state_dir, env_files)


@cloud.command(name="init")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def init_cmd(ctx: click.Context, as_json: bool) -> None:
    """Publisher PKI, KEK and signing key in Key Vault, a publisher certificate for the Key Vault key."""
    from edb_cloud.publisher import init_publisher

    record = init_publisher(_config(ctx))
    if as_json:
        emit_json({"ok": True, **record.to_json()})
    else:
        click.echo(f"publisher keys ready ({record.mode}): KEK {record.kek}, signer {record.signer_key}")


@cloud.command(name="train-demo")
@click.option("--variant", type=click.Choice(["v1", "v2"]), default="v1", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ONNX file to write (default <state>/cloud/models/digits-<variant>.onnx).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def train_demo(ctx: click.Context, variant: str, out: Path | None, as_json: bool) -> None:
    """Train a digits classifier on scikit-learn's bundled data set and export it to ONNX."""
    from edb_cloud.train import train_digits

    config = _config(ctx)
    model = train_digits(variant)  # type: ignore[arg-type]
    path = out or config.cloud_dir / "models" / f"digits-{variant}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.onnx)
    if as_json:
        emit_json({"ok": True, "path": str(path), "variant": variant, "accuracy": model.accuracy,
                   "testSamples": model.test_samples, "model": model.description, "bytes": len(model.onnx),
                   "sha256": model.sha256})
    else:
        click.echo(f"{model.description}: accuracy {model.accuracy:.4f} on {model.test_samples} held-out digits "
                   f"(ONNX Runtime on the exported graph) -> {path}")


@cloud.command(name="build")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", "name", required=True, help="Package name (the twin key, packages.<name>).")
@click.option("--version", "version", required=True)
@click.option("--security-version", type=click.IntRange(min=0), default=None, help="Required for cpk-v2.")
@click.option("--format", "package_format", type=click.Choice(["cpk-v2", "cpk-v1"]), default="cpk-v2",
              show_default=True, help="cpk-v1: LEGACY package for the original key flow (weaker; see docs).")
@click.option("--device", "devices", multiple=True, help="Target device id (repeat; default $EDB_DEVICE_ID).")
@click.option("--device-class", "device_classes", multiple=True, help="Target device class (repeat).")
@click.option("--layout", type=click.Choice(["aligned", "plain"]), default="aligned", show_default=True)
@click.option("--expires-days", type=float, default=365.0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--no-policy", is_flag=True, help="Do not create a key release policy for the package.")
@click.option("--skip-preflight", is_flag=True,
              help="Do not load MODEL the way the TEE will before encrypting it (by default a model the TEE "
                   "would refuse is refused here: CPK_MODEL_UNSUPPORTED with the cause).")
@click.option("--measurement", "measurements", multiple=True,
              help="TEE measurement the new release policy allows (64 hex, `edb tee measurement`; repeatable). "
                   "Default: the running local TEE's.")
@click.option("--min-tee-svn", type=click.IntRange(min=0), default=None,
              help="Minimum TEE security version of the new policy (default: the local TEE's, or 1).")
@click.option("--min-security-version", type=click.IntRange(min=0), default=None,
              help="Minimum package security version of the new policy (default: this package's own).")
@click.option("--allow-any-measurement", is_flag=True,
              help="The new policy accepts ANY TEE measurement (weaker; development only; prints a warning).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def build_cmd(ctx: click.Context, model: Path, name: str, version: str, security_version: int | None,
              package_format: str, devices: tuple[str, ...], device_classes: tuple[str, ...], layout: str,
              expires_days: float, out: Path | None, no_policy: bool, skip_preflight: bool,
              measurements: tuple[str, ...], min_tee_svn: int | None, min_security_version: int | None,
              allow_any_measurement: bool, as_json: bool) -> None:
    """Encrypt and sign MODEL into a confidential package (KEK and signing key from Key Vault).

    First MODEL is loaded exactly as the TEE will load it (its own code and session options); a model
    the TEE would refuse is refused with CPK_MODEL_UNSUPPORTED and the cause (--skip-preflight: not).
    Unless --no-policy, a key release policy is created for the package if it has none: pinned to
    the --measurement values (or the running local TEE's measurement and security version), the
    target devices/classes, and the package's own security version as the minimum."""
    from edb.schemas.packages import check_package_name
    from edb_cloud.packaging import build_package
    from edb_cloud.progress import transfer
    from edb_cloud.publisher import ANY_MEASUREMENT_WARNING, ensure_release_policy, release_pins

    config = _config(ctx)
    check_package_name(name)
    if package_format == "cpk-v1":
        _build_v1(config, model, name, version, security_version, out, as_json, preflight=not skip_preflight)
        return
    if security_version is None:
        raise ConfigError("--security-version is required for cpk-v2 packages", code="CONFIG_MISSING")
    targets = list(devices) or ([config.device_id] if config.device_id and not device_classes else [])
    if not targets and not device_classes:
        raise ConfigError("name a target with --device or --device-class", code="CONFIG_MISSING")
    pins = None
    if not no_policy and config.get("EDB_KEYVAULT_URL"):  # before any work: no measurement, no build
        pins = release_pins(config, measurements, min_tee_svn=min_tee_svn, allow_any_measurement=allow_any_measurement)
        if pins.measurements is None:
            click.echo(ANY_MEASUREMENT_WARNING, err=True)
    path = out or config.cloud_dir / "packages" / f"{name}-{version}.cpk"
    with transfer("encrypting", model.stat().st_size, not as_json) as update:
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            update(done[0])

        built = build_package(config, model, path, package_id=name, version=version, security_version=security_version,
                              devices=targets, device_classes=list(device_classes), expires_days=expires_days,
                              layout=layout, progress=advance, preflight=not skip_preflight)
    policy = "skipped" if no_policy else "skipped (no Key Vault configured)"
    if pins is not None:
        policy = ensure_release_policy(config, name, devices=targets, device_classes=list(device_classes),
                                       min_security_version=built.security_version if min_security_version is None
                                       else min_security_version, pins=pins)
    if as_json:
        emit_json({"ok": True, "path": str(built.path), "packageId": built.package_id, "version": built.version,
                   "securityVersion": built.security_version, "bytes": built.file_size, "kid": built.kid,
                   "manifestSha256": built.manifest_sha256, "policy": policy,
                   "preflight": built.preflight if built.preflight is not None else "skipped"})
    else:
        if built.preflight is not None:
            click.echo(f"preflight: loads as the TEE loads it (weights {built.preflight['weights']}, "
                       f"{len(built.preflight['inputs'])} input(s), {len(built.preflight['outputs'])} output(s))",
                       err=True)
        click.echo(f"built {built.path} ({built.file_size} bytes): {built.package_id} {built.version}, security "
                   f"version {built.security_version}, DEK wrapped under {built.kid}; release policy {policy}")


def _build_v1(config: CloudConfig, model: Path, name: str, version: str, security_version: int | None,
              out: Path | None, as_json: bool, *, preflight: bool) -> None:
    """LEGACY: the original tools' v1 package; no security version, target, expiry or release policy."""
    from edb_cloud.legacy_v1 import build_package_v1

    if security_version is not None:
        raise ConfigError("v1 packages have no security version (no rollback protection)", code="CONFIG_INVALID")
    path = out or config.cloud_dir / "packages" / f"{name}-{version}.cpk"
    built = build_package_v1(config, model, path, package_id=name, version=version, preflight=preflight)
    if as_json:
        emit_json({"ok": True, "path": str(built.path), "packageId": built.package_id, "version": built.version,
                   "format": "cpk-v1", "bytes": built.file_size, "keyName": built.key_name})
    else:
        click.echo(f"built LEGACY v1 {built.path} ({built.file_size} bytes): {built.package_id} {built.version}, "
                   f"class key {built.key_name} in Key Vault (no attestation, no rollback protection)")


@cloud.command(name="publish")
@click.argument("package", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", "name", default=None, help="Package name (default: the package id).")
@click.option("--sas-days", type=float, default=30.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def publish_cmd(ctx: click.Context, package: Path, name: str | None, sas_days: float, as_json: bool) -> None:
    """Upload PACKAGE to Blob storage and record a read-only SAS URL pointer for rollouts."""
    from edb.cpk import open_package
    from edb.schemas.common import iso_utc
    from edb.schemas.packages import check_package_name
    from edb_cloud.blob import publish_blob
    from edb_cloud.progress import transfer
    from edb_cloud.releases import Release

    config = _config(ctx)
    with open_package(package) as reader:
        info = reader.info()
    # The installer refuses a package whose signed id is not the twin name (INSTALL_NAME_MISMATCH; a v1
    # cp-id compares case-insensitively), so a pointer under another name could never install: refuse it
    # here, before the upload.
    expected = str(info.package_id) if info.format == "cpk-v2" else str(info.package_id).lower()
    if name is not None and name != expected:
        raise ConfigError(f"--name {name!r} differs from the package's signed id {info.package_id!r}; the device "
                          "installs a package only under its signed id", code="CONFIG_INVALID")
    name = check_package_name(expected)
    with transfer("uploading", package.stat().st_size, not as_json) as update:
        uploaded = publish_blob(package, name=name, version=str(info.version),
                                connection_string=config.blob_connection_string, container=config.blob_container,
                                connection_verify=config.connection_verify(), sas_days=sas_days,
                                progress=lambda done, total: update(done))
    release = Release(name, str(info.package_id), str(info.version), int(info.security_version or 0), uploaded.url,
                      uploaded.sha256, uploaded.size, uploaded.blob, iso_utc())
    _registry(config).add(release)
    if as_json:
        emit_json({"ok": True, "name": name, "version": release.version, "securityVersion": release.security_version,
                   "sha256": release.sha256, "size": release.size, "blob": release.blob, "url": release.url})
    else:
        click.echo(f"published {name} {release.version} ({release.size} bytes, sha256 {release.sha256[:16]}...) "
                   f"as {release.blob}")


@cloud.command(name="releases")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def releases_cmd(ctx: click.Context, as_json: bool) -> None:
    """List published releases (the pointers rollouts use)."""
    releases = _registry(_config(ctx)).all()
    if as_json:
        emit_json({"ok": True, "releases": [{"name": r.name, "version": r.version,
                                              "securityVersion": r.security_version, "sha256": r.sha256,
                                              "size": r.size, "blob": r.blob, "publishedAt": r.published_at}
                                             for r in releases]})
        return
    for r in releases:
        click.echo(f"{r.name:<16} {r.version:<10} svn {r.security_version:<3} {r.size:>12} B  {r.published_at}  "
                   f"{r.blob}")


@cloud.command(name="deploy")
@click.option("--device", default=None, help="One device (applyConfigurationContent). Default $EDB_DEVICE_ID.")
@click.option("--target-condition", default=None, help="A fleet: automatic deployment, e.g. \"tags.env='prod'\".")
@click.option("--priority", type=int, default=10, show_default=True)
@click.option("--deployment-id", default="edb-base", show_default=True)
@click.option("--platform", default="amd64", show_default=True)
@click.option("--template", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--reset-packages", is_flag=True, help="Do not carry the currently desired packages over.")
@click.option("--carry-packages", is_flag=True,
              help="Fleet: put into the base the package pointers every targeted device desires alike.")
@click.option("--allow-remove", is_flag=True, help="Fleet: allow a base that removes packages from devices.")
@click.option("--dry-run", is_flag=True, help="Expand and validate only; write config/deployment.<platform>.json.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="One device: wait until its edge agent reports the deployment applied (or refused).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for the device.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def deploy_cmd(ctx: click.Context, device: str | None, target_condition: str | None, priority: int,
               deployment_id: str, platform: str, template: Path | None, reset_packages: bool, carry_packages: bool,
               allow_remove: bool, dry_run: bool, wait: bool, timeout: float, as_json: bool) -> None:
    """Expand deployment.template.json like iotedgedev and deploy the module suite. To one device it
    succeeds only once the device's $edgeAgent reports the deployment applied (lastDesiredStatus 200)."""
    from edb_cloud.deploy import (
        default_template,
        deploy_to_device,
        deploy_to_fleet,
        deployed_version,
        render_manifest,
        wait_for_deployment,
        write_manifest,
    )

    config = _config(ctx)
    manifest = render_manifest(config, template or default_template(), platform)
    path = write_manifest(config, manifest, platform)
    modules = sorted(manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"])
    target = "dry run"
    result: dict[str, Any] = {}
    if not dry_run:
        hub = _hub(config)
        if target_condition:
            deploy_to_fleet(hub, deployment_id, manifest, target_condition=target_condition, priority=priority,
                            carry_packages=carry_packages, allow_remove=allow_remove)
            target = f"deployment {deployment_id} ({target_condition}, priority {priority})"
        else:
            device_id = _device(config, device)
            deploy_to_device(hub, device_id, manifest, keep_packages=not reset_packages)
            target = f"device {device_id}"
            if wait:
                version = deployed_version(hub, device_id)
                if not as_json:
                    click.echo(f"deployment manifest {path} -> {target}: waiting for $edgeAgent (version {version})")
                verdict = wait_for_deployment(hub, device_id, version, timeout_s=timeout)
                result = {"applied": {"version": verdict.reported_version, "code": verdict.code}}
    if as_json:
        emit_json({"ok": True, "manifest": str(path), "modules": modules, "target": target, **result})
    else:
        click.echo(f"deployment manifest {path} ({', '.join(modules)}) -> {target}"
                   + (f": applied (version {result['applied']['version']})" if result else ""))


def _wait_and_print(config: CloudConfig, device_id: str, release: Any, timeout: float, as_json: bool,
                    require_serving: bool) -> dict[str, Any]:
    from edb_cloud.progress import status
    from edb_cloud.rollout import wait_for_install

    hub = _hub(config)
    with status(f"{device_id}: {release.name} {release.version}", not as_json) as update:
        outcome = wait_for_install(hub, device_id, release, timeout_s=timeout, on_update=update,
                                   require_serving=require_serving)
    reported = outcome.reported
    return {"device": device_id, "outcome": outcome.state,
            "reported": reported.to_twin() if reported else None, "serving": outcome.serving}


from edb_cloud.progressive_cli import RolloutGroup  # noqa: E402 - the group class for the decorator below


@cloud.group(name="rollout", cls=RolloutGroup)
def rollout_group() -> None:
    """Roll NAME out: `rollout NAME --version V (--device D | --ring R | --plan PLAN)`; a progressive
    rollout's `status`, `pause`, `resume`, `abort` NAME."""


@rollout_group.command(name="start")
@click.argument("name")
@click.option("--version", default=None, help="A published version (default: the newest).")
@click.option("--device", default=None, help="One device: module twin patch. Default $EDB_DEVICE_ID.")
@click.option("--ring", default=None, help="Devices tagged ring=<ring>: a layered deployment.")
@click.option("--priority", type=int, default=20, show_default=True, help="Layered deployment priority (--ring).")
@click.option("--min-version", default=None, help="Also set the runner's model.minVersion.")
@click.option("--allow-remove", is_flag=True, help="Allow a ring rollout that removes packages from devices.")
@click.option("--plan", "plan_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A progressive rollout plan (phases and gates): see docs/orchestrator.md.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the device to report (one device).")
@click.option("--timeout", type=float, default=120.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def rollout_cmd(ctx: click.Context, name: str, version: str | None, device: str | None, ring: str | None,
                priority: int, min_version: str | None, allow_remove: bool, plan_file: Path | None, wait: bool,
                timeout: float, as_json: bool) -> None:
    """Point devices at a published version of NAME (only a pointer goes into the twin)."""
    from edb_cloud.rollout import rollout_to_device, rollout_to_ring

    config = _config(ctx)
    release = _registry(config).find(name, version)
    if plan_file is not None:
        from edb_cloud.progressive_cli import start_plan

        start_plan(ctx, config, _hub(config), _registry(config), release, plan_file, wait=wait, as_json=as_json,
                   allow_remove=allow_remove, timeout=None)
        return
    _rollout(ctx, config, release, device, ring, priority, min_version, wait, timeout, as_json,
             rollout_to_device, rollout_to_ring, allow_remove)


def _rollout(ctx: click.Context, config: CloudConfig, release: Any, device: str | None, ring: str | None,
             priority: int, min_version: str | None, wait: bool, timeout: float, as_json: bool,
             to_device: Callable[..., None], to_ring: Callable[..., str], allow_remove: bool = False) -> None:
    hub = _hub(config)
    result: dict[str, Any] = {"name": release.name, "version": release.version,
                              "securityVersion": release.security_version}
    if ring:
        result["deployment"] = to_ring(hub, ring, release, priority=priority, allow_remove=allow_remove)
        if not as_json:
            click.echo(f"{release.name} {release.version} -> ring {ring} (layered deployment {result['deployment']})")
    else:
        device_id = _device(config, device)
        to_device(hub, device_id, release, min_version=min_version)
        if not as_json:
            click.echo(f"{release.name} {release.version} -> {device_id} (module twin desired packages.{release.name})")
        if wait:
            result.update(_wait_and_print(config, device_id, release, timeout, as_json, require_serving=False))
            if not as_json:
                reported = result.get("reported") or {}
                error = reported.get("error") or {}
                click.echo(f"{device_id}: {result['outcome']}" + (f" ({error.get('code')}: {error.get('message')})"
                                                                  if error else ""))
            if result["outcome"] != "installed":
                if as_json:
                    emit_json({"ok": False, **result, "error": {"code": "CLOUD_ROLLOUT_" + result["outcome"].upper(),
                                                                "message": "the device did not install the version"}})
                ctx.exit(1)
    if as_json:
        emit_json({"ok": True, **result})


def _register_progressive() -> None:
    from edb_cloud.progressive_cli import register

    register(rollout_group, _config, _hub, _registry)


_register_progressive()


@cloud.command(name="rollback")
@click.argument("name")
@click.option("--to-version", default=None, help="Default: the release before the one currently desired.")
@click.option("--device", default=None)
@click.option("--ring", default=None)
@click.option("--priority", type=int, default=20, show_default=True)
@click.option("--allow-remove", is_flag=True, help="Allow a ring rollback that removes packages from devices.")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", type=float, default=120.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def rollback_cmd(ctx: click.Context, name: str, to_version: str | None, device: str | None, ring: str | None,
                 priority: int, allow_remove: bool, wait: bool, timeout: float, as_json: bool) -> None:
    """Point devices back at an older published version. Devices refuse a version whose security
    version is below their rollback floor (TEE_ROLLBACK): to undo a bad model, republish the good
    one with a new version and the current security version, then roll that out."""
    from edb_cloud.rollout import INSTALLER, rollout_to_device, rollout_to_ring

    config = _config(ctx)
    registry = _registry(config)
    if to_version is None:
        current = None
        if not ring:
            desired = _hub(config).module_twin(_device(config, device), INSTALLER).desired
            current = ((desired.get("packages") or {}).get(name) or {}).get("version")
        current = current or registry.find(name).version
        release = registry.previous(name, current)
    else:
        release = registry.find(name, to_version)
    _rollout(ctx, config, release, device, ring, priority, None, wait, timeout, as_json, rollout_to_device,
             rollout_to_ring, allow_remove)


@cloud.command(name="status")
@click.option("--device", "devices", multiple=True, help="Device id(s); default: every IoT Edge device.")
@click.option("--condition", default=None, help="Twin query condition, e.g. \"tags.ring='canary'\".")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def status_cmd(ctx: click.Context, devices: tuple[str, ...], condition: str | None, as_json: bool) -> None:
    """A table of every device's reported package and model state (module twins, service side)."""
    from edb_cloud.status import fleet_status, render_table

    config = _config(ctx)
    hub = _hub(config)
    ids = list(devices) or hub.edge_devices(condition)
    rows = fleet_status(hub, ids)
    if as_json:
        emit_json({"ok": True, "devices": ids, "rows": [r.to_json() for r in rows]})
        return
    from rich.console import Console

    Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160).print(render_table(rows))


@cloud.command(name="tag")
@click.argument("device")
@click.argument("tags", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def tag_cmd(ctx: click.Context, device: str, tags: tuple[str, ...], as_json: bool) -> None:
    """Set device twin tags (KEY=VALUE ...), e.g. `ring=canary`, for targetCondition and --ring."""
    pairs = {}
    for item in tags:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"tag {item!r} is not KEY=VALUE", code="CONFIG_INVALID")
        pairs[key] = value
    _hub(_config(ctx)).set_device_tags(device, pairs)
    if as_json:
        emit_json({"ok": True, "device": device, "tags": pairs})
    else:
        click.echo(f"{device}: tags {pairs}")
