"""Helpers of the module tests (importable by name: tests/modules is on sys.path under pytest)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"
