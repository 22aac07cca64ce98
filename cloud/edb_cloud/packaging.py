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


def build_package(config: CloudConfig, model: Path, output: Path, *, package_id: str, version: str,
                  security_version: int, devices: list[str], device_classes: list[str], expires_days: float = 365,
                  layout: str = "aligned", progress: Callable[[int], None] | None = None) -> BuiltPackage:
    """``layout="aligned"`` converts the ONNX model to the TEE's aligned layout first (weights
    page-aligned after the graph, so the TEE loads them in place: see :mod:`edb.onnx_layout`)."""
    from edb.cpk import PackageIdentity, Target, build

    payload: Path | io.BytesIO = model
    media_type = ONNX_MEDIA_TYPE
    if layout == "aligned":
        from edb import onnx_layout

        payload = io.BytesIO(onnx_layout.convert(model.read_bytes()))
        media_type = onnx_layout.MEDIA_TYPE
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
                        result.signed.manifest_sha256, manifest.kid)
