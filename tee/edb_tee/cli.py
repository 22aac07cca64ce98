"""``edb device ...`` (factory provisioning) and ``edb tee ...`` (the TEE service)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from cryptography import x509

from edb_tee.config import ROLES, AccessConfig, MeasuredConfig, Role, TeeConfig
from edb_tee.paths import DeviceLayout


def _emit(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        width = max(len(k) for k in data)
        for k, v in data.items():
            click.echo(f"{k:<{width}}  {v}")


def _load_roots(paths: tuple[Path, ...]) -> list[x509.Certificate]:
    roots: list[x509.Certificate] = []
    for p in paths:
        roots.extend(x509.load_pem_x509_certificates(p.read_bytes()))
    return roots


def _role_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--<role>-uid / --<role>-gid for every role, and --socket-gid."""
    fn = click.option("--socket-gid", type=click.IntRange(0), default=None,
                      help="Share the TEE socket with this group (mode 0660) so modules running as other "
                           "uids can reach it; default: 0600, owner only.")(fn)
    for role in reversed(ROLES):
        for kind in ("gid", "uid"):
            fn = click.option(f"--{role}-{kind}", f"{role}_{kind}s", multiple=True, type=click.IntRange(0),
                              help=f"A {kind} holding the {role} role (repeatable).")(fn)
    return fn


def _roles_given(options: dict[str, Any]) -> dict[str, Role]:
    """The roles named on the command line (a role is given when any of its uids/gids is)."""
    roles: dict[str, Role] = {}
    for role in ROLES:
        uids, gids = options[f"{role}_uids"], options[f"{role}_gids"]
        if uids or gids:
            roles[role] = Role(frozenset(uids), frozenset(gids))
    return roles


@click.group(help="Provision a simulated device (manufacturer CA, attestation key).")
def device() -> None:
    pass


@device.command("provision")
@click.option("--device-id", required=True, help="Device id (the certificate's CN, the IoT Hub device id).")
@click.option("--device-class", default="trustbox-edge-201", show_default=True, help="Device class (OU).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path(".edb"), show_default=True)
@click.option("--publisher-root", "publisher_roots", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Publisher root(s) to pin (PEM). Default: <state-dir>/pki/root.pem, creating the development "
                   "publisher PKI there first (as `edb pki init` does) if it does not exist.")
@click.option("--no-publisher-root", is_flag=True, help="Pin no publisher root now (v2 installs are refused until "
                                                         "`edb device trust-publisher`).")
@click.option("--allow-legacy-v1", is_flag=True, help="Enable the weaker v1 key flow (interop only).")
@click.option("--tee-svn", type=int, default=1, show_default=True, help="TEE security version.")
@_role_options
@click.option("--json", "as_json", is_flag=True)
def provision_cmd(device_id: str, device_class: str, state_dir: Path, publisher_roots: tuple[Path, ...],
                  no_publisher_root: bool, allow_legacy_v1: bool, tee_svn: int, as_json: bool,
                  socket_gid: int | None, **role_ids: tuple[int, ...]) -> None:
    """Create the device's TEE state: HUK, attestation key (made inside the TEE), device certificate
    from the manufacturer CA, sealed identity with the pinned publisher root(s), caller allow-list.

    Without any --<role>-uid/--<role>-gid the allow-list is the single-uid development default
    (the provisioning user holds every role). With them, each role is held by exactly the ids given
    for it (a role not given is held by nobody), e.g. --installer-uid 10001 --runner-uid 10003
    --admin-uid 0 --socket-gid 10001."""
    from edb_tee.access import describe
    from edb_tee.provisioning import provision

    roles = _roles_given(role_ids)
    access = AccessConfig.per_role(roles, socket_gid=socket_gid) if roles or socket_gid is not None else None

    if not publisher_roots and not no_publisher_root:
        dev_root = state_dir / "pki" / "root.pem"
        if not dev_root.exists():
            from edb.pki.devpki import init_publisher_pki

            init_publisher_pki(state_dir / "pki")
            click.echo(f"created the development publisher PKI in {state_dir / 'pki'} (edb pki init)", err=True)
        publisher_roots = (dev_root,)
    result = provision(state_dir, device_id, device_class=device_class, publisher_roots=_load_roots(publisher_roots),
                       measured=MeasuredConfig(tee_svn=tee_svn, legacy_v1=allow_legacy_v1), access=access)
    out = result.to_json()
    out["publisherRoots"] = len(publisher_roots)
    out["access"] = describe(result.access) if as_json else _access_line(result.access)
    _emit(out, as_json)


def _access_line(access: AccessConfig) -> str:
    from edb_tee.access import summary

    return summary(access)


@device.group("access")
def access_group() -> None:
    """Show or change the TEE's caller allow-list (uids/gids per role)."""


@access_group.command("show")
@click.option("--device-id", required=True)
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path(".edb"), show_default=True)
def access_show_cmd(device_id: str, state_dir: Path) -> None:
    """Print the allow-list in <device>/tee/config.json (needs read access to the TEE directory)."""
    from edb_tee.access import describe
    from edb_tee.provisioning import read_access

    click.echo(json.dumps(describe(read_access(DeviceLayout.for_device(state_dir, device_id))), indent=2))


@access_group.command("set")
@click.option("--device-id", required=True)
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path(".edb"), show_default=True)
@_role_options
@click.option("--owner-only-socket", is_flag=True, help="Back to a 0600 socket (no shared group).")
@click.option("--single-user", type=click.IntRange(0), default=None,
              help="Reset to the development default: this uid holds every role, socket 0600.")
def access_set_cmd(device_id: str, state_dir: Path, socket_gid: int | None, owner_only_socket: bool,
                   single_user: int | None, **role_ids: tuple[int, ...]) -> None:
    """Change the allow-list while the TEE service is stopped (it reads it at start; refused with
    TEE_STATE_LOCKED while it runs). Each role given replaces that role's ids; the others stay."""
    import dataclasses

    from edb_tee.access import describe
    from edb_tee.provisioning import read_access, set_access

    layout = DeviceLayout.for_device(state_dir, device_id)
    roles = _roles_given(role_ids)
    if single_user is not None and (roles or socket_gid is not None or owner_only_socket):
        raise click.UsageError("--single-user replaces the whole allow-list: give it alone")
    if socket_gid is not None and owner_only_socket:
        raise click.UsageError("--socket-gid and --owner-only-socket contradict each other")
    if single_user is not None:
        access = AccessConfig.single_user(single_user)
    else:
        current = read_access(layout)
        gid = None if owner_only_socket else socket_gid if socket_gid is not None else current.socket_gid
        access = dataclasses.replace(current, roles={**current.roles, **roles}, socket_gid=gid)
    click.echo(json.dumps(describe(set_access(layout, access)), indent=2))


@device.command("trust-publisher")
@click.option("--device-id", required=True)
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path(".edb"), show_default=True)
@click.option("--root", "roots", multiple=True, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--replace", is_flag=True, help="Replace the pinned roots instead of adding.")
def trust_publisher_cmd(device_id: str, state_dir: Path, roots: tuple[Path, ...], replace: bool) -> None:
    """Pin publisher root(s) on a provisioned device (the TEE service must be stopped)."""
    from edb_tee.provisioning import trust_publisher

    n = trust_publisher(DeviceLayout.for_device(state_dir, device_id), _load_roots(roots), replace=replace)
    click.echo(f"{n} publisher root(s) pinned")


@device.command("show")
@click.option("--device-id", required=True)
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path(".edb"), show_default=True)
def show_cmd(device_id: str, state_dir: Path) -> None:
    """Public device facts (no TEE access needed)."""
    layout = DeviceLayout.for_device(state_dir, device_id)
    data = json.loads(layout.device_json.read_text())
    cert = x509.load_pem_x509_certificate(layout.certificate.read_bytes())
    data["subject"] = cert.subject.rfc4514_string()
    data["notAfter"] = cert.not_valid_after_utc.isoformat()
    _emit(data, False)


@click.group(help="Run and inspect the TEE-simulated region.")
def tee() -> None:
    pass


@tee.command("serve")
@click.option("--device-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), default=None,
              help="Unix socket path (default: <device-dir>/tee.sock).")
def serve_cmd(device_dir: Path, socket_path: Path | None) -> None:
    """Run the TEE service for one device until SIGTERM/SIGINT."""
    from edb_tee.service import run_service

    sys.exit(run_service(device_dir, socket_path))


@tee.command("measurement")
@click.option("--device-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Use this device's measured configuration (default: the default configuration).")
@click.option("--json", "as_json", is_flag=True)
def measurement_cmd(device_dir: Path | None, as_json: bool) -> None:
    """Print the TEE measurement (what key release policies pin)."""
    from edb_tee.measurement import measure, runtime_description

    measured = TeeConfig.load(DeviceLayout(device_dir).config).measured if device_dir else MeasuredConfig()
    value = measure(measured)
    if as_json:
        click.echo(json.dumps({"measurement": value, "measured": measured.to_json(),
                               "runtime": runtime_description()}, indent=2))
    else:
        click.echo(value)


def _client(device_dir: Path | None, socket_path: Path | None) -> Any:
    from edb.tee import TeeClient

    if socket_path is None:
        if device_dir is None:
            raise click.UsageError("give --socket or --device-dir")
        socket_path = DeviceLayout(device_dir).socket
    return TeeClient(socket_path, reconnect_s=0)


@tee.command("info")
@click.option("--device-dir", type=click.Path(path_type=Path), default=None)
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), default=None)
def info_cmd(device_dir: Path | None, socket_path: Path | None) -> None:
    """Ask the running TEE for its identity, measurement, installed packages and status; with
    --device-dir also the caller allow-list it was started with (when this user can read it)."""
    with _client(device_dir, socket_path) as client:
        out: dict[str, Any] = {"device": client.device_info().to_json(),
                               "installed": [p.to_json() for p in client.list_installed()],
                               "status": client.status()}
    if device_dir is not None:
        from edb.errors import TeeError
        from edb_tee.access import describe
        from edb_tee.provisioning import read_access

        try:
            out["access"] = describe(read_access(DeviceLayout(device_dir)))
        except TeeError:
            out["access"] = "not readable by this user (it lives in the TEE-only directory)"
    click.echo(json.dumps(out, indent=2))
