"""``edb package``: build, inspect, verify and re-wrap confidential packages (.cpk).

Keys and certificates default to the development PKI of ``edb pki init`` ($EDB_STATE_DIR/pki,
else .edb/pki). A ``--kek``/``--signer-key`` value that starts with ``https://`` is an Azure Key
Vault key id (credentials from DefaultAzureCredential). Exit status: 0 on success, 2 with the
error code on any failure; ``--json`` prints one JSON object either way.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import click

from edb.cli._common import (
    default_pki_dir,
    emit_json,
    handles_errors,
    parse_expiry,
    parse_size,
    progress_bar,
)
from edb.cli.keyopts import VaultOptions, kek_provider, signer_provider, vault_options
from edb.cpk import (
    DEFAULT_CHUNK_SIZE,
    FORMAT_V2,
    PackageIdentity,
    Target,
    build,
    decrypt_payload,
    open_package,
    rewrap,
    verify_package,
)
from edb.cpk.errors import CHECK_UNSUPPORTED, KEY_UNAVAILABLE, MANIFEST_INVALID, UNTRUSTED_SIGNER, package_error
from edb.cpk.reader import PackageInfo, PackageReader
from edb.cpk.v1 import load_key_file, verify_v1
from edb.errors import EdbError
from edb.keys.base import Signer
from edb.pki.certs import load_pem_certificates_file
from edb.pki.errors import CertificateError


def _pki_file(value: str | None, name: str) -> str:
    return value if value else str(default_pki_dir() / name)


def _signer(signer_key: str | None, signer_cert: str | None, vault: VaultOptions) -> Signer:
    """The signing key and chain given, else the development PKI's."""
    return signer_provider(_pki_file(signer_key, "signer.key"), _pki_file(signer_cert, "signer.pem"), vault)


def _trust_roots(paths: tuple[str, ...]) -> list[Any]:
    files = list(paths) or [str(default_pki_dir() / "root.pem")]
    roots: list[Any] = []
    for path in files:
        try:
            roots += load_pem_certificates_file(path)
        except CertificateError as exc:
            raise package_error(UNTRUSTED_SIGNER, f"trust root {path}: {exc.message}") from exc
    return roots


def _print_checks(checks: list[dict[str, Any]]) -> None:
    for check in checks:
        click.echo(f"{check['check']:<18} {check['status']:<8} {check.get('detail', '')}")


def _print_info(info: PackageInfo) -> None:
    rows = [
        ("format", info.format), ("id", info.package_id), ("name", info.name), ("vendor", info.vendor),
        ("version", info.version), ("security version", info.security_version), ("target", info.target),
        ("media type", info.media_type), ("plaintext size", info.plaintext_size),
        ("ciphertext size", info.ciphertext_size), ("chunk size", info.chunk_size), ("created", info.created),
        ("expires", info.expires), ("signer", info.signer_subject), ("kid", info.kid),
        ("file size", info.file_size), ("manifest sha256", info.manifest_sha256),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        if value is not None:
            click.echo(f"{key:<{width}}  {value}")


@contextmanager
def _payload(model: str, layout: str) -> Iterator[tuple[IO[bytes], int]]:
    """The bytes to encrypt: MODEL itself, or its aligned ONNX layout in an anonymous temporary
    file (unlinked from the start; the build machine is where plaintext may exist)."""
    if layout == "plain":
        with open(model, "rb") as f:
            yield f, os.fstat(f.fileno()).st_size
        return
    from edb.onnx_layout import convert_file

    with tempfile.TemporaryFile() as tmp:
        convert_file(model, tmp)
        size = tmp.tell()
        tmp.seek(0)
        yield tmp, size


def preflight_payload(source: IO[bytes], size: int, media_type: str, quiet: bool) -> dict[str, Any]:
    """The TEE's own load of the payload (``edb_tee.preflight``); raises CPK_MODEL_UNSUPPORTED."""
    from edb_tee.preflight import preflight

    report = preflight(source, size, media_type)
    if not quiet:
        click.echo(report.summary(), err=True)
    checked: dict[str, Any] = report.to_json()
    return checked


@click.group(name="package")
def package() -> None:
    """Build, inspect, verify and re-wrap confidential packages (.cpk)."""


@package.command(name="build")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .cpk to write.")
@click.option("--id", "package_id", required=True, help="Package id (letters, digits, . _ : -).")
@click.option("--version", "version", required=True, help="Version string, e.g. 1.2.0.")
@click.option("--security-version", type=click.IntRange(min=0), required=True,
              help="Monotonic security version (rollback floor on devices).")
@click.option("--target-device", "target_devices", multiple=True, help="Device id allowed to install (repeat).")
@click.option("--target-class", "target_classes", multiple=True, help="Device class allowed to install (repeat).")
@click.option("--expires", default="365d", show_default=True, help="Duration (30d, 12h) or RFC 3339 UTC time.")
@click.option("--media-type", default="application/octet-stream", show_default=True)
@click.option("--onnx-layout", type=click.Choice(["plain", "aligned"]), default="plain", show_default=True,
              help="aligned: convert MODEL to the page-aligned ONNX layout (edb.onnx_layout) the TEE loads "
                   "without copying weights; sets the media type.")
@click.option("--skip-preflight", is_flag=True,
              help="Do not load MODEL the way the TEE will before encrypting it (by default a model the TEE "
                   "would refuse is refused here: CPK_MODEL_UNSUPPORTED with the cause).")
@click.option("--name", default="Unknown", show_default=True, help="Display name.")
@click.option("--vendor", default="Unknown", show_default=True)
@click.option("--chunk-size", default=str(DEFAULT_CHUNK_SIZE), show_default=True, help="e.g. 1MiB, 256KiB.")
@click.option("--kek", help="KEK: PEM file or Key Vault key id. Default: <pki>/kek.pub.pem or kek.pem.")
@click.option("--signer-key", help="Signing key: PEM file or Key Vault key id. Default: <pki>/signer.key.")
@click.option("--signer-cert", help="Signer chain PEM, leaf first. Default: <pki>/signer.pem.")
@vault_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handles_errors
def build_cmd(model: str, output: str, package_id: str, version: str, security_version: int,
              target_devices: tuple[str, ...], target_classes: tuple[str, ...], expires: str, media_type: str,
              onnx_layout: str, skip_preflight: bool, name: str, vendor: str, chunk_size: str, kek: str | None,
              signer_key: str | None, signer_cert: str | None, ca_bundle: str | None, credential: str | None,
              as_json: bool) -> None:
    """Encrypt MODEL into a signed v2 package (chunked AES-256-GCM, DEK wrapped under the KEK).

    First MODEL is loaded exactly as the TEE will load it (its own code and session options);
    a model the TEE would refuse is refused with CPK_MODEL_UNSUPPORTED and the cause."""
    if not target_devices and not target_classes:
        raise click.UsageError("name at least one --target-device or --target-class")
    now = dt.datetime.now(dt.UTC)
    if onnx_layout == "aligned":
        from edb.onnx_layout import MEDIA_TYPE

        media_type = MEDIA_TYPE
    identity = PackageIdentity(
        package_id=package_id, version=version, security_version=security_version,
        target=Target(device_ids=tuple(target_devices), device_classes=tuple(target_classes)),
        created=now, expires=parse_expiry(expires, now), media_type=media_type, name=name, vendor=vendor,
    )
    if kek is None:
        public = default_pki_dir() / "kek.pub.pem"
        kek = str(public if public.exists() else default_pki_dir() / "kek.pem")
    vault = VaultOptions(credential, ca_bundle)
    kek_p = kek_provider(kek, vault)
    signer = _signer(signer_key, signer_cert, vault)
    checked: dict[str, Any] | None = None
    with _payload(model, onnx_layout) as (source, size):
        if not skip_preflight:
            checked = preflight_payload(source, size, media_type, as_json)
        with progress_bar("encrypting", size, not as_json) as advance:
            result = build(source, output, identity=identity, kek=kek_p, signer=signer,
                           chunk_size=parse_size(chunk_size), progress=advance)
    m = result.manifest
    if as_json:
        emit_json({"ok": True, "path": str(result.path), "fileSize": result.file_size, "id": m.package_id,
                   "version": m.version, "securityVersion": m.security_version, "kid": m.kid,
                   "manifestSha256": result.signed.manifest_sha256, "expires": m.expires.isoformat(),
                   "preflight": checked if checked is not None else "skipped"})
    else:
        click.echo(f"built {result.path} ({result.file_size} bytes): {m.package_id} {m.version} "
                   f"security-version {m.security_version}, {m.chunk_count} chunks, kid {m.kid}")


@package.command(name="inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handles_errors
def inspect_cmd(file: str, as_json: bool) -> None:
    """Show what a package claims (unverified; never any secret)."""
    with open_package(file) as reader:
        info = reader.info()
    if as_json:
        emit_json({"ok": True, **info.to_json()})
    else:
        _print_info(info)


class _Discard:
    """A sink that drops plaintext: verification never writes a decrypted file."""

    def __call__(self, view: memoryview) -> None:
        return None


def _verify_v2(reader: PackageReader, trust_roots: tuple[str, ...], kek: str | None, device_id: str | None,
               device_class: str | None, floor: int | None, vault: VaultOptions, quiet: bool,
               checks: list[dict[str, Any]]) -> None:
    now = dt.datetime.now(dt.UTC)
    size = reader.span(0).size
    with progress_bar("hashing", size, not quiet) as advance:
        verified = verify_package(reader, trust_roots=_trust_roots(trust_roots), now=now, device_id=device_id,
                                  device_class=device_class, security_floor=floor, progress=advance)
    checks.append({"check": "signature", "status": "ok", "detail": f"signed by {verified.signer.subject}"})
    checks.append({"check": "policy", "status": "ok",
                   "detail": "not expired" + (", targets this device" if device_id or device_class else "")
                   + (f", security version >= {floor}" if floor is not None else "")})
    checks.append({"check": "ciphertext-digest", "status": "ok", "detail": "SHA-256 of the payload matches"})
    if kek is None:
        checks.append({"check": "decrypt", "status": "skipped", "detail": "no --kek: tags and plaintext not checked"})
        return
    dek = bytearray(kek_provider(kek, vault).unwrap(verified.manifest.wrapped_dek))
    try:
        with progress_bar("decrypting", verified.manifest.plaintext_size, not quiet) as advance:
            decrypt_payload(verified, dek, _Discard(), progress=advance)
    finally:
        dek[:] = bytes(len(dek))
    checks.append({"check": "decrypt", "status": "ok",
                   "detail": "every chunk tag and the plaintext digest verify (plaintext discarded)"})


def unsupported_checks(package_format: str, *, trust_roots: tuple[str, ...], kek: str | None,
                       key_file: str | None, device_id: str | None, device_class: str | None,
                       floor: int | None) -> list[str]:
    """The options asking for checks ``package_format`` cannot perform. A v1 manifest has no
    target, security version, publisher chain or wrapped DEK; a v2 package has no class key."""
    if package_format == FORMAT_V2:
        return ["--key-file"] if key_file is not None else []
    asked = {"--trust-root": bool(trust_roots), "--kek": kek is not None, "--device-id": device_id is not None,
             "--device-class": device_class is not None, "--security-floor": floor is not None}
    return [option for option, given in asked.items() if given]


@package.command(name="verify")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--trust-root", "trust_roots", multiple=True, type=click.Path(dir_okay=False),
              help="Pinned publisher root PEM (repeat). Default: <pki>/root.pem.")
@click.option("--key-file", type=click.Path(dir_okay=False), help='v1: {"<key_name>": "<base64 key>"}.')
@click.option("--kek", help="v2: also unwrap the DEK and check every tag and the plaintext digest.")
@click.option("--device-id", help="Check the package targets this device id.")
@click.option("--device-class", help="Check the package targets this device class.")
@click.option("--security-floor", type=click.IntRange(min=0), help="Refuse a security version below this.")
@vault_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handles_errors
def verify_cmd(file: str, trust_roots: tuple[str, ...], key_file: str | None, kek: str | None,
               device_id: str | None, device_class: str | None, security_floor: int | None,
               ca_bundle: str | None, credential: str | None, as_json: bool) -> None:
    """Verify FILE: v2 signature, chain, policy, digests (and with --kek every tag); v1 tag, digest and
    signature with --key-file. Exit 0 only when everything checked is valid; a check the format
    cannot perform (--device-id, --device-class, --security-floor, --trust-root, --kek on v1;
    --key-file on v2) fails with CPK_CHECK_UNSUPPORTED."""
    checks: list[dict[str, Any]] = []
    with open_package(file) as reader:
        info = reader.info()
        try:
            unsupported = unsupported_checks(reader.format, trust_roots=trust_roots, kek=kek, key_file=key_file,
                                             device_id=device_id, device_class=device_class, floor=security_floor)
            if unsupported:
                raise package_error(CHECK_UNSUPPORTED, f"a {reader.format} package cannot be checked for "
                                    f"{', '.join(unsupported)}: refused rather than skipped")
            if reader.format == FORMAT_V2:
                _verify_v2(reader, trust_roots, kek, device_id, device_class, security_floor,
                           VaultOptions(credential, ca_bundle), as_json, checks)
            else:
                if key_file is None:
                    raise package_error(KEY_UNAVAILABLE, "a v1 package needs --key-file to be verified")
                report = verify_v1(reader, load_key_file(key_file))
                checks += report.to_json()
                checks.append({"check": "manifest", "status": "unauthenticated",
                               "detail": "v1 manifests and certificates are not signed (legacy format)"})
                report.raise_for_failure()
        except EdbError as exc:
            if as_json:
                emit_json({"ok": False, "error": exc.to_dict(), "format": info.format, "checks": checks})
                click.get_current_context().exit(2)
            _print_checks(checks)
            raise
    if as_json:
        emit_json({"ok": True, "format": info.format, "id": info.package_id, "version": info.version,
                   "securityVersion": info.security_version, "checks": checks})
    else:
        _print_checks(checks)
        click.echo(f"valid: {info.format} {info.package_id} {info.version}")


@package.command(name="rewrap")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write (default: replace FILE).")
@click.option("--old-kek", required=True, help="KEK the DEK is wrapped under now (PEM or Key Vault key id).")
@click.option("--new-kek", required=True, help="KEK to wrap it under (PEM or Key Vault key id).")
@click.option("--signer-key", help="Signing key. Default: <pki>/signer.key.")
@click.option("--signer-cert", help="Signer chain PEM. Default: <pki>/signer.pem.")
@click.option("--trust-root", "trust_roots", multiple=True, type=click.Path(dir_okay=False),
              help="Pinned publisher root PEM the source must verify against. Default: <pki>/root.pem.")
@vault_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handles_errors
def rewrap_cmd(file: str, output: str | None, old_kek: str, new_kek: str, signer_key: str | None,
               signer_cert: str | None, trust_roots: tuple[str, ...], ca_bundle: str | None, credential: str | None,
               as_json: bool) -> None:
    """Re-wrap the DEK of FILE under another KEK (rotation) and re-sign; payload bytes unchanged."""
    with open_package(file) as reader:
        if reader.format != FORMAT_V2:
            raise package_error(MANIFEST_INVALID, "only v2 packages carry a wrapped DEK")
        old_kid = reader.manifest_v2.kid
    vault = VaultOptions(credential, ca_bundle)
    signer = _signer(signer_key, signer_cert, vault)
    with progress_bar("copying", Path(file).stat().st_size, not as_json) as advance:
        result = rewrap(file, output or file, old_kek=kek_provider(old_kek, vault),
                        new_kek=kek_provider(new_kek, vault), signer=signer, trust_roots=_trust_roots(trust_roots),
                        progress=advance)
    if as_json:
        emit_json({"ok": True, "path": str(result.path), "oldKid": old_kid, "kid": result.manifest.kid,
                   "manifestSha256": result.signed.manifest_sha256})
    else:
        click.echo(f"re-wrapped {result.path}: {old_kid} -> {result.manifest.kid}")
