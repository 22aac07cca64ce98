"""Helpers of the module tests (importable by name: tests/modules is on sys.path under pytest)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from package_installer.sources import PackageHosts


@dataclass
class PackageServer:
    base_url: str
    ca_path: Path
    files: dict[str, bytes] = field(default_factory=dict)
    #: path -> behaviour: "cut:<n>" close after n bytes once, "redirect:<url>", "status:<n>",
    #: "norange" (ignore Range), "extra:<n>" (send n more bytes than the file),
    #: "trickle:<seconds>:<bytes>" (that many bytes at a time, pausing in between)
    behaviours: dict[str, str] = field(default_factory=dict)
    ranges: list[str | None] = field(default_factory=list)

    @property
    def hosts(self) -> PackageHosts:
        """An allow-list of this server alone (its address and port)."""
        return PackageHosts.parse(urlsplit(self.base_url).netloc)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"
