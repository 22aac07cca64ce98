"""Install policy on an authenticated v2 manifest: expiry, target, rollback floor. Pure."""

from __future__ import annotations

import datetime as dt

from edb.cpk.errors import EXPIRED, ROLLBACK, WRONG_TARGET, package_error
from edb.cpk.manifest_v2 import ManifestV2


def check_policy(
    manifest: ManifestV2,
    *,
    now: dt.datetime,
    device_id: str | None = None,
    device_class: str | None = None,
    security_floor: int | None = None,
) -> None:
    """CPK_EXPIRED if ``now`` is at or past ``expires``; CPK_WRONG_TARGET if a device id or class
    is given and neither is targeted; CPK_ROLLBACK if the security version is below the floor
    (equal is allowed: reinstalling the serving version is not a rollback)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if now >= manifest.expires:
        raise package_error(EXPIRED, f"package expired at {manifest.expires:%Y-%m-%dT%H:%M:%SZ}")
    if (device_id is not None or device_class is not None) and not manifest.target.allows(device_id, device_class):
        raise package_error(WRONG_TARGET, f"package does not target device {device_id!r} / class {device_class!r}")
    if security_floor is not None and manifest.security_version < security_floor:
        raise package_error(
            ROLLBACK, f"security version {manifest.security_version} is below the floor {security_floor}"
        )
