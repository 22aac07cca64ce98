"""``edb images build``: the base image, the wheelhouse and every module of the deployment template."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from edb_local.azurite import project_root
from edb_local.images.build import ImageBuilder, docker_client, read_plan
from edb_local.images.plan import choose_base, platform_named

DEFAULT_REGISTRY = "localhost:5000"  # cloud/edb_cloud/defaults.env: what the template expands to


def registry() -> str:
    return os.environ.get("CONTAINER_REGISTRY_SERVER") or DEFAULT_REGISTRY


@click.group(name="images")
def images() -> None:
    """Build the module images (amd64, arm64) without a registry."""


@images.command()
@click.option("--platform", "platform_name", default="linux/amd64", show_default=True,
              help="linux/amd64 or linux/arm64 (arm64 on an amd64 host needs qemu-user-static >= 10 "
                   "and binfmt-support: tools/with-docker --arm64)")
@click.option("--base", default="offline", show_default=True,
              help="offline (a Debian bookworm base made with mmdebstrap), official (python:3.11-slim-bookworm, "
                   "which must be present locally: nothing is pulled), or any local image")
@click.option("--module", "only", multiple=True, help="only these module folders (default: every module)")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="root filesystems and wheels, by content key (default: .edb/images in the project)")
@click.option("--json", "as_json", is_flag=True)
def build(platform_name: str, base: str, only: tuple[str, ...], cache_dir: Path | None, as_json: bool) -> None:
    """Build every module in deployment.template.json and print each image's size."""
    root = project_root()
    platform = platform_named(platform_name)
    plan = read_plan(root, platform, choose_base(platform, base), registry())
    builder = ImageBuilder(root, cache_dir or root / ".edb" / "images", docker_client(),
                           progress=None if as_json else click.echo)
    results = list(builder.build_all(plan, only))
    if as_json:
        click.echo(json.dumps({"platform": platform.docker, "images": [
            {"name": r.name, "tag": r.tag, "sizeBytes": r.size, "seconds": round(r.seconds, 1), "cached": r.cached}
            for r in results]}))
        return
    click.echo(f"{'image':<20} {'tag':<52} {'size':>9}")
    for r in results:
        click.echo(f"{r.name:<20} {r.tag:<52} {r.size / 1e6:>6.1f} MB")
