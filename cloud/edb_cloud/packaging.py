"""``edb cloud build``: a model file -> a signed, encrypted v2 package, keys from Key Vault.

The DEK is generated and wrapped inside :func:`edb.cpk.build` (RSA-OAEP-256 under the KEK); the
publisher signature comes from the Key Vault signing key. The plaintext model is read here, in the
build pipeline: one of the two places where it may exist.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edb_cloud.config import CloudConfig
from edb_cloud.publisher import load_publisher, providers

ONNX_MEDIA_TYPE = "application/vnd.onnx"
LAYOUTS = ("aligned", "plain")


@dataclass(frozen=True)
class BuiltPackage:
    path: Path
    package_id: str
    version: str
    security_version: int
    file_size: int
    manifest_sha256: str
    kid: str
    preflight: dict[str, Any] | None = None  # edb_tee.preflight's report; None when skipped


def build_package(config: CloudConfig, model: Path, output: Path, *, package_id: str, version: str,
                  security_version: int, devices: list[str], device_classes: list[str], expires_days: float = 365,
                  layout: str = "aligned", progress: Callable[[int], None] | None = None,
                  preflight: bool = True) -> BuiltPackage:
    """``layout="aligned"`` converts the ONNX model to the TEE's aligned layout first (weights
    page-aligned after the graph, so the TEE loads them in place: see :mod:`edb.onnx_layout`).
    ``preflight`` (the default) first loads the payload exactly as the TEE will
    (:func:`edb_tee.preflight.preflight`) and refuses a model it would refuse (``CPK_MODEL_UNSUPPORTED``)."""
    from edb.cpk import PackageIdentity, Target, build

    payload: Path | io.BytesIO = model
    media_type = ONNX_MEDIA_TYPE
    if layout == "aligned":
        from edb import onnx_layout

        payload = io.BytesIO(onnx_layout.convert(model.read_bytes()))
        media_type = onnx_layout.MEDIA_TYPE
    report = preflight_model(payload, media_type) if preflight else None
    record = load_publisher(config)
    kek, signer = providers(config, record)
    now = dt.datetime.now(dt.UTC)
    identity = PackageIdentity(
        package_id=package_id, version=version, security_version=security_version,
        target=Target(device_ids=tuple(devices), device_classes=tuple(device_classes)),
        created=now, expires=now + dt.timedelta(days=expires_days), media_type=media_type,
        name=package_id, vendor="EDB demo publisher",
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    result = build(payload, output, identity=identity, kek=kek, signer=signer, progress=progress)
    manifest = result.manifest
    return BuiltPackage(output, manifest.package_id, manifest.version, manifest.security_version, result.file_size,
                        result.signed.manifest_sha256, manifest.kid, report)


def preflight_model(payload: Path | io.BytesIO, media_type: str) -> dict[str, Any]:
    """The TEE's own load of ``payload`` (see :mod:`edb_tee.preflight`); raises CPK_MODEL_UNSUPPORTED."""
    from edb_tee.preflight import preflight

    if isinstance(payload, io.BytesIO):
        return preflight(payload, len(payload.getbuffer()), media_type).to_json()
    with open(payload, "rb") as fh:
        return preflight(fh, payload.stat().st_size, media_type).to_json()
