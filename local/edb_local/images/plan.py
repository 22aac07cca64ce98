"""Which images ``edb images build`` makes, and how (pure: documents in, a build plan out).

Three kinds of image, built in this order for one platform:

1. the **base**: the official ``python:3.11-slim-bookworm`` (``arm64v8/`` for arm64) when a
   registry is reachable, or a Debian bookworm root filesystem made offline with ``mmdebstrap``
   (Python 3.11 from Debian, no compiler) imported ``FROM scratch`` with an explicit platform;
2. the **wheelhouse**: every module's Python dependencies as wheels for that platform, downloaded
   on the host (``pip download --only-binary=:all:``) and put in a ``FROM scratch`` image that the
   module Dockerfiles copy from, so an image build needs no network;
3. one image per module named in ``deployment.template.json`` (``${MODULES.<folder>}``), from its
   ``module.json`` Dockerfile for the platform, tagged as the template expands it
   (``<repository>:<version>-<platform>``).

Every image the builder makes is named by a content key (a hash of what goes into it), so a build
whose inputs did not change is skipped, and nothing is ever pulled: the builder checks that its
inputs exist locally first (``IMAGES_BASE_MISSING`` otherwise).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edb.errors import ConfigError

PYTHON_VERSION = "3.11"
DEBIAN_SUITE = "bookworm"
#: Debian packages of the offline base: Python 3.11, venv (ensurepip), CA certificates, the C++ and
#: OpenMP runtimes ONNX Runtime and scikit-learn link against, and useradd. No compiler.
OFFLINE_BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "libstdc++6", "libgomp1", "passwd")
#: Files the base does not need (docs, man pages, translations): smaller images, nothing run.
OFFLINE_BASE_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*")
OFFLINE_BASE_INCLUDES = ("/usr/share/doc/*/copyright",)

LABEL_PREFIX = "org.edb."
LABEL_MODULE = "org.edb.module"
LABEL_PLATFORM = "org.edb.platform"
LABEL_CONTENT = "org.edb.content-key"
LABEL_KIND = "org.edb.kind"  # base | wheelhouse | module
OCI_TITLE = "org.opencontainers.image.title"
OCI_VERSION = "org.opencontainers.image.version"
#: labels every module image must carry (tests/containers/test_image_safety.py checks them).
REQUIRED_MODULE_LABELS = (OCI_TITLE, OCI_VERSION, LABEL_MODULE, LABEL_PLATFORM, LABEL_CONTENT, LABEL_KIND)

_MODULE_REF = re.compile(r"^\$\{MODULES\.([A-Za-z0-9_\-]+)(?:\.([A-Za-z0-9_\-]+))?\}$")


class ImagePlanError(ConfigError):
    code = "IMAGES_PLAN_INVALID"


@dataclass(frozen=True)
class Platform:
    """One target: Docker's name, iotedgedev's name (module.json), Debian's and pip's."""

    docker: str  # linux/amd64
    iotedge: str  # amd64 | arm64v8 (module.json "platforms" keys, the tag suffix)
    debian_arch: str  # amd64 | arm64
    pip_platforms: tuple[str, ...]
    official_base: str

    @property
    def arch(self) -> str:
        return self.docker.split("/", 1)[1]


PLATFORMS: dict[str, Platform] = {
    "linux/amd64": Platform("linux/amd64", "amd64", "amd64",
                            ("manylinux2014_x86_64", "manylinux_2_28_x86_64"), "python:3.11-slim-bookworm"),
    # manylinux_2_28 as well, or pip settles for the last onnxruntime with a manylinux2014 wheel (1.16)
    "linux/arm64": Platform("linux/arm64", "arm64v8", "arm64",
                            ("manylinux2014_aarch64", "manylinux_2_28_aarch64"),
                            "arm64v8/python:3.11-slim-bookworm"),
}


def platform_named(name: str) -> Platform:
    aliases = {"amd64": "linux/amd64", "x86_64": "linux/amd64", "arm64": "linux/arm64", "arm64v8": "linux/arm64",
               "aarch64": "linux/arm64", "linux/arm64/v8": "linux/arm64"}
    key = aliases.get(name, name)
    if key not in PLATFORMS:
        raise ImagePlanError(f"unknown platform {name!r}: one of {', '.join(sorted(PLATFORMS))}",
                             code="IMAGES_PLATFORM_UNKNOWN")
    return PLATFORMS[key]


def content_key(*parts: object) -> str:
    """A short, stable hash of JSON-able parts (the cache key of an image)."""
    data = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class BaseImage:
    """``offline``: made with mmdebstrap here; else an image the user supplies (official or own)."""

    tag: str
    offline: bool
    platform: Platform
    mmdebstrap_args: tuple[str, ...] = ()


def offline_base(platform: Platform) -> BaseImage:
    args = ("--variant=minbase", f"--arch={platform.debian_arch}", f"--include={','.join(OFFLINE_BASE_PACKAGES)}",
            *(f"--dpkgopt=path-exclude={p}" for p in OFFLINE_BASE_EXCLUDES),
            *(f"--dpkgopt=path-include={p}" for p in OFFLINE_BASE_INCLUDES), DEBIAN_SUITE)
    return BaseImage(f"edb-base:{DEBIAN_SUITE}-{platform.arch}-{content_key(args)}", True, platform, args)


def choose_base(platform: Platform, requested: str | None) -> BaseImage:
    """``None``/``offline``: the mmdebstrap base; ``official``: python:3.11-slim-bookworm for the
    platform; anything else: that image, which must already be present locally."""
    if requested in (None, "", "offline"):
        return offline_base(platform)
    if requested == "official":
        return BaseImage(platform.official_base, False, platform)
    assert requested is not None
    if any(c.isspace() for c in requested) or requested.startswith("-"):
        raise ImagePlanError(f"invalid base image name {requested!r}")
    return BaseImage(requested, False, platform)


def combined_requirements(texts: Iterable[str]) -> tuple[str, ...]:
    """Requirement lines of every module, comments dropped, deduplicated, sorted."""
    lines: set[str] = set()
    for text in texts:
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if line:
                lines.add(line)
    return tuple(sorted(lines))


#: pure-Python source distributions a dependency needs, as pip requirements (see pure_python_builds)
PURE_PYTHON_SDISTS = ("paho-mqtt>=1.6.1,<2",)
TRANSITIVE_SDISTS = frozenset({"paho-mqtt"})  # azure-iot-device's


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


@dataclass(frozen=True)
class Wheelhouse:
    tag: str
    platform: Platform
    requirements: tuple[str, ...]

    def pure_python_builds(self) -> tuple[str, ...]:
        """Requirements published only as a source distribution of pure Python (paho-mqtt 1.x, which
        azure-iot-device needs): built into a ``py3-none-any`` wheel on the host first, since a
        download for another platform takes wheels only."""
        return tuple(r for r in PURE_PYTHON_SDISTS if any(_name(q) == _name(r) for q in self.requirements)
                     or _name(r) in TRANSITIVE_SDISTS)

    def pip_wheel_args(self, dest: str) -> list[str]:
        return ["wheel", "--no-deps", "--wheel-dir", dest, *self.pure_python_builds()]

    def pip_download_args(self, dest: str) -> list[str]:
        args = ["download", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
                "--implementation", "cp", "--dest", dest, "--find-links", dest]
        for plat in self.platform.pip_platforms:
            args += ["--platform", plat]
        return [*args, *self.requirements]


def wheelhouse_for(platform: Platform, requirements: tuple[str, ...]) -> Wheelhouse:
    return Wheelhouse(f"edb-wheelhouse:{platform.arch}-{content_key(platform.pip_platforms, requirements)}",
                      platform, requirements)


@dataclass(frozen=True)
class ModuleBuild:
    folder: str  # modules/<folder>
    dockerfile: str  # relative to the build context (the repository root)
    tag: str  # <repository>:<version>-<iotedge platform>, as the template expands it
    version: str
    platform: Platform
    build_args: Mapping[str, str] = field(default_factory=dict)
    context_paths: tuple[str, ...] = ()  # what the Dockerfile copies (for the content key)

    def labels(self, content: str) -> dict[str, str]:
        return {OCI_TITLE: self.folder, OCI_VERSION: self.version, LABEL_MODULE: self.folder,
                LABEL_PLATFORM: self.platform.docker, LABEL_CONTENT: content, LABEL_KIND: "module"}


@dataclass(frozen=True)
class BuildPlan:
    platform: Platform
    base: BaseImage
    wheelhouse: Wheelhouse
    modules: tuple[ModuleBuild, ...]


def template_modules(template: Mapping[str, Any]) -> tuple[str, ...]:
    """Module folders named by ``${MODULES.<folder>}`` images in the template, in startupOrder."""
    try:
        modules = template["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    except (KeyError, TypeError):
        raise ImagePlanError("deployment template has no $edgeAgent modules") from None
    found: list[tuple[int, str]] = []
    for module_id, spec in modules.items():
        image = str(((spec or {}).get("settings") or {}).get("image", ""))
        match = _MODULE_REF.match(image.strip())
        if match is None:
            raise ImagePlanError(f"module {module_id}: image {image!r} is not a ${{MODULES.<folder>}} reference")
        found.append((int(spec.get("startupOrder", 4294967295)), match.group(1)))
    return tuple(folder for _, folder in sorted(found))


def module_build(folder: str, module_json: Mapping[str, Any], platform: Platform, registry: str,
                 base: BaseImage, wheelhouse: Wheelhouse, context_paths: tuple[str, ...]) -> ModuleBuild:
    try:
        image = module_json["image"]
        repository = str(image["repository"]).replace("${CONTAINER_REGISTRY_SERVER}", registry)
        version = str(image["tag"]["version"])
        dockerfile = str(image["tag"]["platforms"][platform.iotedge])
    except (KeyError, TypeError):
        raise ImagePlanError(f"modules/{folder}/module.json has no Dockerfile for {platform.iotedge}",
                             code="IMAGES_PLATFORM_UNSUPPORTED") from None
    if "$" in repository:
        raise ImagePlanError(f"modules/{folder}/module.json: unexpanded repository {repository!r}")
    relative = dockerfile.removeprefix("./")
    if relative.startswith("/") or ".." in relative.split("/"):
        raise ImagePlanError(f"modules/{folder}/module.json: Dockerfile path {dockerfile!r} leaves the module")
    return ModuleBuild(
        folder=folder, dockerfile=f"modules/{folder}/{relative}", version=version, platform=platform,
        tag=f"{repository}:{version}-{platform.iotedge}",
        build_args={"BASE_IMAGE": base.tag, "WHEELHOUSE_IMAGE": wheelhouse.tag},
        context_paths=context_paths,
    )


def build_plan(template: Mapping[str, Any], module_jsons: Mapping[str, Mapping[str, Any]],
               requirements: Mapping[str, str], context_paths: Mapping[str, tuple[str, ...]],
               platform: Platform, base: BaseImage, registry: str) -> BuildPlan:
    """The whole build for one platform. ``module_jsons``/``requirements``/``context_paths`` are
    keyed by module folder (the caller reads the files)."""
    folders = template_modules(template)
    missing = [f for f in folders if f not in module_jsons or f not in requirements]
    if missing:
        raise ImagePlanError(f"modules named in the template but not in modules/: {', '.join(missing)}",
                             code="IMAGES_MODULE_UNKNOWN")
    wheelhouse = wheelhouse_for(platform, combined_requirements(requirements[f] for f in folders))
    builds = tuple(module_build(f, module_jsons[f], platform, registry, base, wheelhouse,
                                context_paths.get(f, ())) for f in folders)
    return BuildPlan(platform, base, wheelhouse, builds)


def copied_paths(dockerfile_text: str) -> tuple[str, ...]:
    """Build-context sources of the Dockerfile's ``COPY`` lines (not ``COPY --from``): what the
    module's content key hashes besides the Dockerfile itself."""
    sources: list[str] = []
    for raw in dockerfile_text.splitlines():
        parts = raw.split()
        if len(parts) < 3 or parts[0].upper() != "COPY" or any(p.startswith("--from") for p in parts):
            continue
        sources += [p for p in parts[1:-1] if not p.startswith("--")]
    return tuple(sources)
