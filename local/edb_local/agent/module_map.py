"""Container image -> local entry point: the ONE place that says which process runs for an image.

A deployment names images the iotedgedev way: ``${MODULES.package_installer}`` in the template,
``localhost:5000/package_installer:0.1.0-amd64`` once expanded. The agent takes the image's
repository name (last path component, without tag or digest; ``-`` and ``_`` are equivalent) and
looks it up here. The project's modules (``modules/<package>/``) run as ``python -m <package>.main``.

Host-provided entries are device services that the device's OS runs, not the agent: the TEE
service is one (like OP-TEE's secure world, it exists before any container). The deployment still
lists it for real devices; the agent never spawns it and reports its runtimeStatus from a health
check of the service instead.

Development entries (a test module, a module under construction) come from an optional JSON file,
``<state-dir>/agent/module_map.json``: ``{"<repository>": {"module": "pkg.main"} | {"script":
"/abs/path.py"} | {"host": "tee"}}``. Built-in entries cannot be overridden by it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edb_local.agent.errors import ImageNotMappedError

EntryKind = Literal["python-module", "python-script", "host", "container"]


@dataclass(frozen=True)
class EntryPoint:
    kind: EntryKind
    target: str  # dotted module, absolute script path, or host service name

    def argv(self, python: str) -> list[str]:
        if self.kind == "python-module":
            return [python, "-m", self.target]
        if self.kind == "python-script":
            return [python, self.target]
        raise ValueError(f"host-provided service {self.target!r} is not started by the agent")

    @property
    def host_provided(self) -> bool:
        return self.kind == "host"


def _module(name: str) -> EntryPoint:
    return EntryPoint("python-module", name)


#: repository name -> entry point. Add a module here when you add modules/<package>/.
BUILTIN_MODULES: dict[str, EntryPoint] = {
    "package_installer": _module("package_installer.main"),
    "inference_runner": _module("inference_runner.main"),
    "telemetry_reporter": _module("telemetry_reporter.main"),
    "simulated_sensor": _module("simulated_sensor.main"),
    "camera_sensor": _module("camera_sensor.main"),
    # The TEE service is a device-level service started by `edb local up` (the device's OS).
    "tee_service": EntryPoint("host", "tee"),
}

_PLACEHOLDER = re.compile(r"^\$\{MODULES\.([A-Za-z0-9_\-]+)(?:\.[A-Za-z0-9_\-]+)?\}$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def repository_of(image: str) -> str:
    """``${MODULES.x}`` / ``${MODULES.x.amd64}`` / ``registry:5000/path/x:tag@sha256:..`` -> ``x``."""
    image = image.strip()
    placeholder = _PLACEHOLDER.match(image)
    if placeholder:
        name = placeholder.group(1)
    else:
        name = image.split("@", 1)[0].rsplit("/", 1)[-1]
        name = name.split(":", 1)[0]  # after the last '/', a ':' can only start the tag
    return name.lower().replace("-", "_")


class ModuleMap:
    def __init__(self, extra: Mapping[str, EntryPoint] | None = None) -> None:
        self._entries = {**(extra or {}), **BUILTIN_MODULES}

    def resolve(self, image: str) -> EntryPoint:
        repository = repository_of(image)
        entry = self._entries.get(repository)
        if entry is None:
            raise ImageNotMappedError(
                f"image {image!r} (repository {repository!r}) has no local entry point; "
                f"known: {', '.join(sorted(self._entries))}"
            )
        return entry

    @classmethod
    def from_file(cls, path: Path) -> ModuleMap:
        if not path.exists():
            return cls()
        return cls(parse_extra_entries(json.loads(path.read_text())))


def parse_extra_entries(doc: Any) -> dict[str, EntryPoint]:
    if not isinstance(doc, Mapping):
        raise ImageNotMappedError("module map file is not a JSON object")
    entries: dict[str, EntryPoint] = {}
    for repository, spec in doc.items():
        key = str(repository).lower().replace("-", "_")
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise ImageNotMappedError(f"module map entry {repository!r}: one of module/script/host")
        ((kind, target),) = spec.items()
        if kind == "module" and isinstance(target, str) and _DOTTED.match(target):
            entries[key] = EntryPoint("python-module", target)
        elif kind == "script" and isinstance(target, str) and Path(target).is_absolute():
            entries[key] = EntryPoint("python-script", target)
        elif kind == "host" and isinstance(target, str) and target:
            entries[key] = EntryPoint("host", target)
        else:
            raise ImageNotMappedError(f"module map entry {repository!r}: invalid {kind!r}")
    return entries
