"""Release policy per package id: the document, its storage name, and its evaluation (pure).

Stored as a Key Vault *secret* in the same vault as the KEK (see docs/key-release.md for why):
name ``edb-policy-<package id>``, content type ``application/vnd.edb.release-policy+json``::

    {
      "schema": "edb.release-policy/1",
      "packageId": "digits",
      "devices": ["edge-device-1"],              # optional: allowed device ids (certificate CN)
      "deviceClasses": ["trustbox-edge-201"],    # optional: allowed classes (certificate OU)
      "minTeeSvn": 1,                            # minimum TEE security version
      "measurements": ["<64 hex>", ...],         # allowed TEE measurements, or the string "any"
      "minSecurityVersion": 0,                   # minimum package security version
      "revokedVersions": ["1.0.0"]               # package versions never released again
    }

Every present constraint must hold (AND). At least one of ``devices``/``deviceClasses`` is
required, and ``measurements`` must be given explicitly, so an empty policy releases nothing.
Checks run in a fixed order, each with its own code: device, class, TEE security version,
measurement, package security version, revoked version.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from key_release_service import codes
from key_release_service.codes import Denied

SCHEMA = "edb.release-policy/1"
CONTENT_TYPE = "application/vnd.edb.release-policy+json"
SECRET_PREFIX = "edb-policy-"  # noqa: S105 - a name prefix, not a secret
MAX_POLICY_BYTES = 24 * 1024  # a Key Vault secret holds at most 25 KB
MAX_LIST = 1000
_PLAIN_ID = re.compile(r"^[0-9A-Za-z-]{1,100}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def policy_secret_name(package_id: str) -> str:
    """The Key Vault secret holding ``package_id``'s policy (names allow only ``[0-9A-Za-z-]``).

    Ids in that alphabet map to themselves, so an operator finds ``edb-policy-digits`` at a
    glance; any other id maps to ``edb-policy-x-<sha256 prefix>``. Collisions cannot be abused:
    the document names its package and the service checks it.
    """
    if _PLAIN_ID.match(package_id) and not package_id.startswith("x-"):
        return SECRET_PREFIX + package_id
    return SECRET_PREFIX + "x-" + hashlib.sha256(package_id.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class ReleasePolicy:
    package_id: str
    devices: frozenset[str] | None = None
    device_classes: frozenset[str] | None = None
    min_tee_svn: int = 0
    measurements: frozenset[str] | None = None  # None = "any" (explicit in the document)
    min_security_version: int = 0
    revoked_versions: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.devices and not self.device_classes:
            raise ValueError("a policy must name allowed devices and/or device classes")
        if self.min_tee_svn < 0 or self.min_security_version < 0:
            raise ValueError("security versions are >= 0")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": SCHEMA, "packageId": self.package_id}
        if self.devices is not None:
            out["devices"] = sorted(self.devices)
        if self.device_classes is not None:
            out["deviceClasses"] = sorted(self.device_classes)
        out["minTeeSvn"] = self.min_tee_svn
        out["measurements"] = "any" if self.measurements is None else sorted(self.measurements)
        out["minSecurityVersion"] = self.min_security_version
        out["revokedVersions"] = sorted(self.revoked_versions)
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def _str_set(value: object, what: str, pattern: re.Pattern[str] | None = None) -> frozenset[str]:
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise ValueError(f"{what} must be a list of at most {MAX_LIST} strings")
    for item in value:
        if not isinstance(item, str) or not 0 < len(item) <= 256 or (pattern and not pattern.match(item)):
            raise ValueError(f"{what} has an invalid entry")
    return frozenset(value)


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
        raise ValueError(f"{what} must be an integer >= 0")
    return value


def parse_policy(text: str | bytes, *, expected_package_id: str) -> ReleasePolicy:
    """Parse and validate a stored policy; raises ``Denied(KR_POLICY_INVALID)`` (fail closed)."""
    try:
        if len(text) > MAX_POLICY_BYTES:
            raise ValueError("policy document too large")
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError(f"schema must be {SCHEMA}")
        known = {"schema", "packageId", "devices", "deviceClasses", "minTeeSvn", "measurements",
                 "minSecurityVersion", "revokedVersions", "comment", "updatedAt", "updatedBy"}
        if set(data) - known:
            raise ValueError(f"unknown members {sorted(set(data) - known)}")
        if data.get("packageId") != expected_package_id:
            raise ValueError("the document names another package")
        measurements = data.get("measurements")
        if measurements != "any":
            measurements = _str_set(measurements, "measurements", _HEX64)
        return ReleasePolicy(
            package_id=expected_package_id,
            devices=_str_set(data["devices"], "devices") if "devices" in data else None,
            device_classes=_str_set(data["deviceClasses"], "deviceClasses") if "deviceClasses" in data else None,
            min_tee_svn=_int(data.get("minTeeSvn", 0), "minTeeSvn"),
            measurements=None if measurements == "any" else measurements,
            min_security_version=_int(data.get("minSecurityVersion", 0), "minSecurityVersion"),
            revoked_versions=_str_set(data.get("revokedVersions", []), "revokedVersions"),
        )
    except (ValueError, TypeError, RecursionError) as exc:
        raise Denied(codes.POLICY_INVALID, f"release policy for this package is invalid: {exc}") from exc


@dataclass(frozen=True)
class ReleaseFacts:
    """What the service has established about the device and the package before the policy check."""

    device_id: str
    device_class: str | None
    tee_svn: int
    tee_measurement: str
    package_id: str
    version: str
    security_version: int


def evaluate(policy: ReleasePolicy, facts: ReleaseFacts) -> None:
    """Raise the first denial in the fixed order, or return if every constraint holds."""
    if policy.package_id != facts.package_id:
        raise Denied(codes.POLICY_INVALID, "policy is for another package")
    if policy.devices is not None and facts.device_id not in policy.devices:
        raise Denied(codes.DEVICE_NOT_ALLOWED, "device is not allowed by the release policy")
    if policy.device_classes is not None and facts.device_class not in policy.device_classes:
        raise Denied(codes.DEVICE_CLASS_NOT_ALLOWED, "device class is not allowed by the release policy")
    if facts.tee_svn < policy.min_tee_svn:
        raise Denied(codes.TEE_SVN_TOO_LOW,
                     f"TEE security version {facts.tee_svn} is below the policy minimum {policy.min_tee_svn}")
    if policy.measurements is not None and facts.tee_measurement not in policy.measurements:
        raise Denied(codes.MEASUREMENT_NOT_ALLOWED, "TEE measurement is not allowed by the release policy")
    if facts.security_version < policy.min_security_version:
        raise Denied(codes.PACKAGE_SVN_TOO_LOW,
                     f"package security version {facts.security_version} is below the policy minimum "
                     f"{policy.min_security_version}")
    if facts.version in policy.revoked_versions:
        raise Denied(codes.PACKAGE_REVOKED, f"package version {facts.version} is revoked")


def build_policy(package_id: str, *, devices: Iterable[str] = (), device_classes: Iterable[str] = (),
                 min_tee_svn: int = 0, measurements: Iterable[str] | None = None, min_security_version: int = 0,
                 revoked_versions: Iterable[str] = ()) -> ReleasePolicy:
    """Helper for the CLI and tests; validates like :func:`parse_policy` (KR_POLICY_INVALID)."""
    try:
        policy = ReleasePolicy(
            package_id=package_id,
            devices=frozenset(devices) or None,
            device_classes=frozenset(device_classes) or None,
            min_tee_svn=min_tee_svn,
            measurements=None if measurements is None else frozenset(m.lower() for m in measurements),
            min_security_version=min_security_version,
            revoked_versions=frozenset(revoked_versions),
        )
    except ValueError as exc:
        raise Denied(codes.POLICY_INVALID, f"release policy is invalid: {exc}") from exc
    parse_policy(policy.dumps(), expected_package_id=package_id)  # same validation as the service
    return policy
