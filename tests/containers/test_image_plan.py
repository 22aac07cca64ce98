"""The build plan of `edb images build` (pure): which images, which build arguments, which tags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edb_local.images.plan import (
    PLATFORMS,
    ImagePlanError,
    build_plan,
    choose_base,
    combined_requirements,
    content_key,
    copied_paths,
    offline_base,
    platform_named,
    template_modules,
)

ROOT = Path(__file__).resolve().parents[2]


def _repo_plan(platform: str = "linux/amd64", base: str | None = None):  # type: ignore[no-untyped-def]
    template = json.loads((ROOT / "deployment.template.json").read_text())
    folders = [p.name for p in (ROOT / "modules").iterdir() if (p / "module.json").is_file()]
    jsons = {f: json.loads((ROOT / "modules" / f / "module.json").read_text()) for f in folders}
    reqs = {f: (ROOT / "modules" / f / "requirements.txt").read_text() for f in folders}
    plat = platform_named(platform)
    return build_plan(template, jsons, reqs, {}, plat, choose_base(plat, base), "localhost:5000")


def test_every_template_module_is_built_in_startup_order_with_the_template_tag() -> None:
    plan = _repo_plan()
    assert [m.folder for m in plan.modules] == ["tee_service", "telemetry_reporter", "package_installer",
                                                 "inference_runner", "simulated_sensor"]
    runner = plan.modules[3]
    assert runner.tag == "localhost:5000/inference_runner:0.1.0-amd64"
    assert runner.dockerfile == "modules/inference_runner/Dockerfile.amd64"
    assert runner.build_args == {"BASE_IMAGE": plan.base.tag, "WHEELHOUSE_IMAGE": plan.wheelhouse.tag}


def test_arm64_uses_the_arm64v8_dockerfiles_and_aarch64_wheels_including_manylinux_2_28() -> None:
    plan = _repo_plan("arm64")
    assert all(m.dockerfile.endswith("Dockerfile.arm64v8") and m.tag.endswith("-arm64v8") for m in plan.modules)
    args = plan.wheelhouse.pip_download_args("/w")
    assert "manylinux_2_28_aarch64" in args and "manylinux2014_aarch64" in args
    assert "--only-binary=:all:" in args and args[args.index("--python-version") + 1] == "3.11"
    assert plan.base.mmdebstrap_args[1] == "--arch=arm64"


def test_offline_base_is_keyed_by_its_recipe_and_the_official_one_by_platform() -> None:
    amd, arm = offline_base(PLATFORMS["linux/amd64"]), offline_base(PLATFORMS["linux/arm64"])
    assert amd.offline and amd.tag != arm.tag and amd.tag == offline_base(PLATFORMS["linux/amd64"]).tag
    assert not any(p in " ".join(amd.mmdebstrap_args) for p in ("gcc", "build-essential", "python3-dev"))
    assert choose_base(PLATFORMS["linux/arm64"], "official").tag == "arm64v8/python:3.11-slim-bookworm"
    assert choose_base(PLATFORMS["linux/amd64"], "my/base:1").tag == "my/base:1"
    with pytest.raises(ImagePlanError):
        choose_base(PLATFORMS["linux/amd64"], "--privileged")


def test_wheelhouse_key_changes_with_requirements_only() -> None:
    one = _repo_plan().wheelhouse
    assert one.tag == _repo_plan().wheelhouse.tag
    assert combined_requirements(["a>=1 # why\n\nb\n", "a>=1\n"]) == ("a>=1", "b")
    assert content_key(("a",)) != content_key(("b",))
    assert "paho-mqtt>=1.6.1,<2" in one.pure_python_builds()  # azure-iot-device's, sdist only


def test_unknown_platform_module_and_image_reference_are_refused() -> None:
    with pytest.raises(ImagePlanError) as exc:
        platform_named("linux/s390x")
    assert exc.value.code == "IMAGES_PLATFORM_UNKNOWN"
    bad = {"modulesContent": {"$edgeAgent": {"properties.desired": {"modules": {
        "m": {"settings": {"image": "docker.io/library/nginx:latest"}}}}}}}
    with pytest.raises(ImagePlanError):
        template_modules(bad)
    template = json.loads((ROOT / "deployment.template.json").read_text())
    plat = PLATFORMS["linux/amd64"]
    with pytest.raises(ImagePlanError) as exc:
        build_plan(template, {}, {}, {}, plat, offline_base(plat), "r")
    assert exc.value.code == "IMAGES_MODULE_UNKNOWN"


def test_copied_paths_are_the_context_sources_not_other_stages() -> None:
    text = (ROOT / "modules/tee_service/Dockerfile.amd64").read_text()
    assert copied_paths(text) == ("modules/tee_service/requirements.txt", "shared/edb", "tee/edb_tee")


@pytest.mark.parametrize("folder", ["inference_runner", "package_installer", "simulated_sensor",
                                    "telemetry_reporter", "tee_service"])
def test_dockerfiles_take_the_base_and_wheelhouse_as_arguments_and_install_offline(folder: str) -> None:
    for name, default in (("amd64", "python:3.11-slim-bookworm"), ("arm64v8", "arm64v8/python:3.11-slim-bookworm")):
        text = (ROOT / "modules" / folder / f"Dockerfile.{name}").read_text()
        assert f"ARG BASE_IMAGE={default}" in text
        assert "--no-index" in text and "--find-links /tmp/wheels" in text
        assert "\nUSER 1000" in text  # numeric, non-root
