"""``edb cloud status``: every device's package and model state, read from the service side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edb.schemas import LoadFailure, ReportedPackage
from edb_cloud.iothub import CloudError, HubService


@dataclass(frozen=True)
class StatusRow:
    device_id: str
    package: str
    desired: str | None
    state: str | None
    installed: str | None
    security_version: int | None
    error: str | None
    serving: str | None
    model_state: str | None
    p50_ms: float | None
    answered: int | None
    load_failure: str | None = None  # the runner's model.lastLoadFailure: "<version> <code>"

    def to_json(self) -> dict[str, Any]:
        return {"deviceId": self.device_id, "package": self.package, "desiredVersion": self.desired,
                "state": self.state, "installedVersion": self.installed, "securityVersion": self.security_version,
                "error": self.error, "servingVersion": self.serving, "modelState": self.model_state,
                "p50Ms": self.p50_ms, "answered": self.answered, "lastLoadFailure": self.load_failure}


def rows_for_device(hub: HubService, device_id: str) -> list[StatusRow]:
    try:
        installer = hub.module_twin(device_id, "package_installer")
    except CloudError:
        return [StatusRow(device_id, "-", None, "no installer", None, None, None, None, None, None, None)]
    try:
        runner = hub.module_twin(device_id, "inference_runner").reported
    except CloudError:
        runner = {}
    model = runner.get("model") or {}
    stats = runner.get("stats") or {}
    failure = LoadFailure.from_twin(model.get("lastLoadFailure"))
    failed = f"{failure.version or '-'} {failure.error.code}" if failure is not None else None
    desired = installer.desired.get("packages") or {}
    reported = installer.reported.get("packages") or {}
    rows = []
    for name in sorted(set(desired) | set(reported)):
        want = desired.get(name) if isinstance(desired.get(name), dict) else {}
        have = ReportedPackage.from_twin(reported.get(name))
        is_model = model.get("name") == name
        rows.append(StatusRow(
            device_id, name, want.get("version") if want else None,
            have.state.value if have else None,
            have.installed_version if have else None,
            have.security_version if have else None,
            have.error.code if have and have.error else None,
            model.get("version") if is_model else None,
            model.get("state") if is_model else None,
            stats.get("p50Ms") if is_model else None,
            stats.get("count") if is_model else None,
            failed if failure is not None and failure.name == name else None,
        ))
    return rows or [StatusRow(device_id, "-", None, None, None, None, None, model.get("version"), model.get("state"),
                              stats.get("p50Ms"), stats.get("count"), failed)]


def fleet_status(hub: HubService, devices: list[str]) -> list[StatusRow]:
    return [row for device in devices for row in rows_for_device(hub, device)]


def render_table(rows: list[StatusRow]) -> Any:
    from rich.table import Table

    table = Table(title="Devices (service side: module twins)")
    for column in ("device", "package", "desired", "state", "installed", "svn", "error", "serving", "model",
                   "p50 ms", "answered"):
        table.add_column(column)
    for r in rows:
        state_style = {"installed": "green", "failed": "red"}.get(r.state or "", "yellow")
        table.add_row(r.device_id, r.package, r.desired or "-", f"[{state_style}]{r.state or '-'}[/]",
                      r.installed or "-", str(r.security_version) if r.security_version is not None else "-",
                      r.error or "-", r.serving or "-",
                      (r.model_state or "-") + (f" ([red]{r.load_failure} failed[/])" if r.load_failure else ""),
                      f"{r.p50_ms:.1f}" if isinstance(r.p50_ms, int | float) else "-",
                      str(r.answered) if r.answered is not None else "-")
    return table
