"""The orchestrator's record of published packages (``<state>/cloud/releases.json``).

``rollout --version`` and ``rollback`` look pointers up here instead of asking the user for a URL,
a hash and a size. The record holds only what a twin holds (a pointer), never a key.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edb.errors import ConfigError
from edb.schemas import DesiredPackage, version_key


@dataclass(frozen=True)
class Release:
    name: str  # the twin key (packages.<name>)
    package_id: str
    version: str
    security_version: int
    url: str
    sha256: str
    size: int
    blob: str
    published_at: str

    def desired(self) -> DesiredPackage:
        return DesiredPackage(self.name, self.version, self.url, self.sha256, self.size)


class ReleaseRegistry:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = json.loads(self.path.read_text())
        return data if isinstance(data, list) else []

    def all(self, name: str | None = None) -> list[Release]:
        releases = [Release(**item) for item in self._load()]
        if name is not None:
            releases = [r for r in releases if r.name == name]
        return sorted(releases, key=lambda r: (r.name, version_key(r.version), r.published_at))

    def add(self, release: Release) -> None:
        items = [i for i in self._load() if not (i["name"] == release.name and i["version"] == release.version)]
        items.append(asdict(release))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(items, indent=2) + "\n")
        os.replace(tmp, self.path)

    def find(self, name: str, version: str | None = None) -> Release:
        """A given version, or the newest one when ``version`` is None."""
        candidates = self.all(name)
        if version is not None:
            candidates = [r for r in candidates if r.version == version]
        if not candidates:
            wanted = f"{name} {version}" if version else name
            raise ConfigError(f"no published release of {wanted} in {self.path}; run `edb cloud publish` first",
                              code="CONFIG_RELEASE_UNKNOWN")
        return candidates[-1]

    def previous(self, name: str, version: str) -> Release:
        """The newest release older than ``version`` (what ``rollback`` goes back to)."""
        older = [r for r in self.all(name) if version_key(r.version) < version_key(version)]
        if not older:
            raise ConfigError(f"no release of {name} older than {version}", code="CONFIG_RELEASE_UNKNOWN")
        return older[-1]
