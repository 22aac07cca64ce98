"""Container tests: a Docker Engine, and the module images built from this tree (once per machine:
`edb images build`'s content-keyed cache under .edb/images makes later sessions reuse them).

Without a Docker Engine these tests are skipped with a reason pytest prints (-ra): they need
`dockerd` (docs/containers.md; .ci/run installs and starts it)."""

from __future__ import annotations

import fcntl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "agent"))  # agent_harness: deployments through the service SDK


def _client() -> Any:
    import docker

    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as exc:
        pytest.skip(f"NOT RUN: no Docker Engine ({type(exc).__name__}): container tests not run; start dockerd "
                    "(docs/containers.md, .ci/run does)")
    return client


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    client = _client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def module_images(docker_client: Any) -> dict[str, str]:
    """folder -> tag of every template module's amd64 image (built now if this tree changed)."""
    from edb_local.images.build import ImageBuilder, read_plan
    from edb_local.images.plan import choose_base, platform_named

    cache = ROOT / ".edb" / "images"
    cache.mkdir(parents=True, exist_ok=True)
    platform = platform_named("linux/amd64")
    plan = read_plan(ROOT, platform, choose_base(platform, "offline"), "localhost:5000")
    with open(cache / ".lock", "w") as lock:  # one builder at a time (xdist workers, parallel sessions)
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = list(ImageBuilder(ROOT, cache, docker_client).build_all(plan))
    for image in built:
        print(f"image {image.name}: {image.tag} {image.size / 1e6:.1f} MB"
              + (" (cached)" if image.cached else f" (built in {image.seconds:.0f} s)"))
    return {m.folder: m.tag for m in plan.modules}
