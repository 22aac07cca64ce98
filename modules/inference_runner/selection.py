"""Which model version the runner should serve (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from edb.schemas import ModelSpec, version_key


@dataclass(frozen=True)
class Decision:
    load: bool
    reason: str


def decide(spec: ModelSpec | None, active: tuple[str, str] | None, available: str | None) -> Decision:
    """``active`` is (name, version) of the serving model; ``available`` the installed version of spec.name.

    The installer and the TEE decide what may be installed (signatures, rollback floor); the runner
    serves the installed version as long as it satisfies ``minVersion``, including a deliberate
    downgrade the TEE accepted.
    """
    if spec is None:
        return Decision(False, "no model is desired")
    if available is None:
        return Decision(False, f"{spec.name} is not installed")
    if spec.min_version is not None and version_key(available) < version_key(spec.min_version):
        return Decision(False, f"installed {available} is below minVersion {spec.min_version}")
    if active is not None and active == (spec.name, available):
        return Decision(False, "already serving")
    return Decision(True, f"serve {spec.name} {available}")
