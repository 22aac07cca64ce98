"""`edb images build` against the real engine, where no image is built: a base that is not present
is refused with its code, and nothing is pulled (Docker Hub is never tried)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_official_base_not_present_is_refused_and_never_pulled(docker_client: Any) -> None:
    official = "python:3.11-slim-bookworm"
    if docker_client.api.images(name=official):
        pytest.skip(f"NOT RUN: {official} is present here, so the refusal cannot be shown")
    out = subprocess.run([sys.executable, "-m", "edb.cli.main", "images", "build", "--base", "official",
                          "--module", "tee_service"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode != 0
    assert "IMAGES_BASE_MISSING" in out.stderr + out.stdout and official in out.stderr + out.stdout
    assert docker_client.api.images(name=official) == []  # not pulled (nor tried: no registry is reachable)
