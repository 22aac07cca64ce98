"""``edb images build``: the imperative shell around :mod:`edb_local.images.plan`.

mmdebstrap and pip run on the host (they need the network: Debian's mirror and PyPI); everything
Docker does goes through the Docker Engine API (the ``docker`` SDK), with ``pull=False`` and every
``FROM`` checked to be present locally first, so a build never asks a registry for anything.
Intermediate results are cached under ``<cache>/`` (default ``.edb/images``) by content key.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from edb.errors import EdbError
from edb_local.images.emulation import emulation_problem
from edb_local.images.emulation import probe as probe_emulation
from edb_local.images.plan import (
    LABEL_CONTENT,
    LABEL_KIND,
    LABEL_PLATFORM,
    BaseImage,
    BuildPlan,
    ModuleBuild,
    Platform,
    Wheelhouse,
    build_plan,
    content_key,
    copied_paths,
)

log = logging.getLogger(__name__)


class ImageBuildError(EdbError):
    code = "IMAGES_BUILD_FAILED"


@dataclass(frozen=True)
class BuiltImage:
    name: str  # module folder, "base" or "wheelhouse"
    tag: str
    size: int
    seconds: float
    cached: bool


def docker_client(timeout: int = 600) -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"Docker Engine not reachable: {exc}", code="IMAGES_DOCKER_UNAVAILABLE") from None
    return client


def read_plan(root: Path, platform: Platform, base: BaseImage, registry: str) -> BuildPlan:
    template = json.loads((root / "deployment.template.json").read_text())
    module_jsons: dict[str, Any] = {}
    requirements: dict[str, str] = {}
    contexts: dict[str, tuple[str, ...]] = {}
    for module_dir in sorted((root / "modules").iterdir()):
        if not (module_dir / "module.json").is_file():
            continue
        folder = module_dir.name
        module_jsons[folder] = json.loads((module_dir / "module.json").read_text())
        requirements[folder] = (module_dir / "requirements.txt").read_text()
        dockerfile = module_dir / module_jsons[folder]["image"]["tag"]["platforms"].get(platform.iotedge, "")
        if dockerfile.is_file():
            contexts[folder] = copied_paths(dockerfile.read_text())
    return build_plan(template, module_jsons, requirements, contexts, platform, base, registry)


def tree_digest(root: Path, paths: tuple[str, ...]) -> str:
    """SHA-256 over the files under ``paths`` (names and bytes, sorted; caches skipped)."""
    digest = hashlib.sha256()
    for rel in sorted(paths):
        top = root / rel
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(str(file.relative_to(root)).encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


class ImageBuilder:
    def __init__(self, root: Path, cache_dir: Path, client: docker.DockerClient,
                 progress: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.cache_dir = cache_dir
        self.client = client
        self.progress = progress or (lambda _msg: None)

    # -- helpers --------------------------------------------------------------------------------

    def _image(self, tag: str) -> Any | None:
        try:
            return self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            return None

    def _require_local(self, tag: str, what: str) -> Any:
        image = self._image(tag)
        if image is None:
            raise ImageBuildError(f"{what} {tag!r} is not present locally; images are never pulled here "
                                  "(load it with `docker load`, or build with --base offline)",
                                  code="IMAGES_BASE_MISSING")
        return image

    def _build(self, *, tag: str, platform: Platform, labels: dict[str, str], dockerfile: str | None = None,
               fileobj: io.BytesIO | None = None, buildargs: dict[str, str] | None = None) -> None:
        # network_mode none: a build needs no network (the wheelhouse is local, pip runs --no-index), and
        # with none it can have none: nothing in a Dockerfile can reach out, and a build does not
        # depend on the engine's default bridge.
        kwargs: dict[str, Any] = {"tag": tag, "pull": False, "rm": True, "forcerm": True, "decode": True,
                                  "platform": platform.docker, "labels": labels, "buildargs": buildargs or {},
                                  "network_mode": "none"}
        if fileobj is not None:
            kwargs.update(fileobj=fileobj, custom_context=True)
        else:
            kwargs.update(path=str(self.root), dockerfile=dockerfile)
        tail: list[str] = []
        for chunk in self.client.api.build(**kwargs):
            if "stream" in chunk:
                line = str(chunk["stream"]).rstrip()
                if line:
                    tail = [*tail[-20:], line]
                    log.debug("%s: %s", tag, line)
            if "error" in chunk:
                raise ImageBuildError(f"docker build of {tag} failed: {chunk['error'].strip()} | "
                                      + " | ".join(tail[-5:]))

    def _context_of(self, files: dict[str, Path], dockerfile: str) -> io.BytesIO:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = dockerfile.encode()
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            for name, path in files.items():
                tar.add(str(path), arcname=name)
        buf.seek(0)
        return buf

    def _result(self, name: str, tag: str, started: float, cached: bool) -> BuiltImage:
        image = self._require_local(tag, "image")
        built = BuiltImage(name, tag, int(image.attrs.get("Size", 0)), time.monotonic() - started, cached)
        self.progress(f"{name}: {tag} {built.size / 1e6:.1f} MB" + (" (cached)" if cached else
                                                                     f" ({built.seconds:.0f} s)"))
        return built

    # -- the three kinds of image ---------------------------------------------------------------

    def base(self, base: BaseImage) -> BuiltImage:
        started = time.monotonic()
        if not base.offline:
            return self._result("base", base.tag, started, True)  # the user's: present, never pulled
        if self._image(base.tag) is not None:
            return self._result("base", base.tag, started, True)
        if shutil.which("mmdebstrap") is None:
            raise ImageBuildError("mmdebstrap is not installed (apt-get install mmdebstrap, or run through "
                                  "tools/with-docker, which installs it)", code="IMAGES_TOOL_MISSING")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        key = base.tag.rsplit(":", 1)[1]
        rootfs = self.cache_dir / f"rootfs-{key}.tar"
        if rootfs.is_dir():  # an older cache entry (a directory): made again as a tar
            shutil.rmtree(rootfs)
        if not rootfs.is_file():
            self.progress(f"base: mmdebstrap {' '.join(base.mmdebstrap_args)} (network: the Debian mirror)")
            partial = rootfs.with_name(f"rootfs-{key}.partial.tar")  # mmdebstrap picks tar by the name
            out = subprocess.run(["mmdebstrap", *base.mmdebstrap_args, str(partial)], capture_output=True,
                                 text=True, check=False)
            if out.returncode != 0:
                partial.unlink(missing_ok=True)
                raise ImageBuildError(f"mmdebstrap failed: {out.stderr.strip()[-600:]}")
            partial.replace(rootfs)
        # FROM scratch + ADD with an explicit platform: `docker import` would record an arm64 root
        # filesystem as amd64 (Docker 20.10).
        dockerfile = "FROM scratch\nADD rootfs.tar /\nCMD [\"python3\"]\n"
        context = self._context_of({"rootfs.tar": rootfs}, dockerfile)
        self._build(tag=base.tag, platform=base.platform, fileobj=context,
                    labels={LABEL_KIND: "base", LABEL_PLATFORM: base.platform.docker,
                            LABEL_CONTENT: key})
        return self._result("base", base.tag, started, False)

    def wheelhouse(self, wheelhouse: Wheelhouse) -> BuiltImage:
        started = time.monotonic()
        if self._image(wheelhouse.tag) is not None:
            return self._result("wheelhouse", wheelhouse.tag, started, True)
        key = wheelhouse.tag.rsplit(":", 1)[1]
        wheels = self.cache_dir / f"wheels-{key}"
        if not (wheels / ".complete").exists():
            self.progress(f"wheelhouse: pip download for {wheelhouse.platform.docker} (network: PyPI)")
            wheels.mkdir(parents=True, exist_ok=True)
            for args in (wheelhouse.pip_wheel_args(str(wheels)), wheelhouse.pip_download_args(str(wheels))):
                out = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                                     capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    raise ImageBuildError(f"pip {args[0]} failed: {out.stderr.strip()[-600:]}")
            (wheels / ".complete").write_text("\n".join(wheelhouse.requirements) + "\n")
        files = {f"wheels/{p.name}": p for p in sorted(wheels.glob("*.whl"))}
        context = self._context_of(files, "FROM scratch\nCOPY wheels /wheels\n")
        self._build(tag=wheelhouse.tag, platform=wheelhouse.platform, fileobj=context,
                    labels={LABEL_KIND: "wheelhouse", LABEL_PLATFORM: wheelhouse.platform.docker,
                            LABEL_CONTENT: key})
        return self._result("wheelhouse", wheelhouse.tag, started, False)

    def module(self, build: ModuleBuild, base_id: str, wheelhouse_id: str) -> BuiltImage:
        started = time.monotonic()
        sources = tree_digest(self.root, (build.dockerfile, ".dockerignore", *build.context_paths))
        key = content_key(sources, base_id, wheelhouse_id, dict(build.build_args), build.tag)
        existing = self._image(build.tag)
        if existing is not None and (existing.labels or {}).get(LABEL_CONTENT) == key:
            return self._result(build.folder, build.tag, started, True)
        self._build(tag=build.tag, platform=build.platform, dockerfile=build.dockerfile,
                    buildargs=dict(build.build_args), labels=build.labels(key))
        return self._result(build.folder, build.tag, started, False)

    def build_all(self, plan: BuildPlan, only: tuple[str, ...] = ()) -> Iterator[BuiltImage]:
        verdict = emulation_problem(plan.base.platform, probe_emulation(plan.base.platform))
        if not verdict.ok:
            raise ImageBuildError(verdict.message, code=verdict.code)
        if verdict.message:
            self.progress(f"warning: {verdict.message}")
        base = self.base(plan.base)
        yield base
        wheelhouse = self.wheelhouse(plan.wheelhouse)
        yield wheelhouse
        base_id = self._require_local(plan.base.tag, "base image").id
        wheelhouse_id = self._require_local(plan.wheelhouse.tag, "wheelhouse").id
        for build in plan.modules:
            if not only or build.folder in only:
                yield self.module(build, base_id, wheelhouse_id)
