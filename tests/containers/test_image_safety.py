"""Every module image, inspected: non-root numeric user, expected labels, no compiler, no secret,
key or model baked in, runs with a read-only root, and the only paths it may write are mount targets
that deployment.template.json declares for it. Sizes are printed (pytest -s, or the bench)."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest

from edb_local.images.plan import LABEL_MODULE, REQUIRED_MODULE_LABELS

ROOT = Path(__file__).resolve().parents[2]
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "as", "ld", "make", "x86_64-linux-gnu-gcc-12", "rustc", "go")
SECRET_SUFFIXES = (".key", ".onnx", ".cpk", ".p12", ".pfx", ".jwk", ".kek")
SECRET_NAMES = ("huk", "id_rsa", "id_ecdsa", "id_ed25519", "rpmb", ".env", "local.env", "owner.key")
# public CA bundles are expected (TLS trust), and nothing else that looks like PEM
CA_BUNDLES = ("etc/ssl/", "usr/share/ca-certificates/", "/certifi/cacert.pem", "/pip/_vendor/certifi/")
# a PEM private key with a body (code that merely names the header is fine)
PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n:,-]{64,}-----END")
FOLDERS = ("tee_service", "telemetry_reporter", "package_installer", "inference_runner", "simulated_sensor")
ENTRY = {"tee_service": "edb_tee.cli", "telemetry_reporter": "telemetry_reporter.main",
         "package_installer": "package_installer.main", "inference_runner": "inference_runner.main",
         "simulated_sensor": "simulated_sensor.main"}

# The first test may build the images on a cold machine (base image, wheelhouse, five modules).
pytestmark = pytest.mark.timeout(1800)


def _template_mount_targets(folder: str) -> set[str]:
    template = json.loads((ROOT / "deployment.template.json").read_text())
    modules = template["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    host = modules[folder]["settings"]["createOptions"].get("HostConfig", {})
    targets = {b.split(":")[1] for b in host.get("Binds", [])}
    targets |= {m["Target"] for m in host.get("Mounts", [])} | set(host.get("Tmpfs", {}))
    return targets


@pytest.fixture(scope="module")
def filesystems(docker_client: Any, module_images: dict[str, str]) -> dict[str, list[tarfile.TarInfo]]:
    """Every image's file list (and small files' bytes), from `docker export` of a created container."""
    out: dict[str, list[tarfile.TarInfo]] = {}
    for folder, tag in module_images.items():
        container = docker_client.api.create_container(tag, command=["true"])
        try:
            data = b"".join(docker_client.api.export(container["Id"]))
        finally:
            docker_client.api.remove_container(container["Id"], force=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            for member in members:
                if member.isfile() and member.size < 2_000_000 and not any(b in member.name for b in CA_BUNDLES):
                    fh = tar.extractfile(member)
                    holds_key = fh is not None and PEM_PRIVATE_KEY.search(fh.read()) is not None
                    member.pax_headers = {"private": "1"} if holds_key else {}
        out[folder] = members
    return out


@pytest.mark.parametrize("folder", FOLDERS)
def test_user_labels_and_size(folder: str, docker_client: Any, module_images: dict[str, str]) -> None:
    image = docker_client.images.get(module_images[folder])
    user = image.attrs["Config"]["User"]
    uid = int(user.split(":")[0])
    assert uid >= 10000, f"{folder} runs as {user!r}"
    labels = image.labels
    assert all(label in labels for label in REQUIRED_MODULE_LABELS), labels
    assert labels[LABEL_MODULE] == folder and image.attrs["Architecture"] == "amd64"
    print(f"{folder}: {image.attrs['Size'] / 1e6:.1f} MB, user {user}")


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_compiler_secret_key_or_model_baked_in(folder: str, filesystems: dict[str, list[tarfile.TarInfo]]) -> None:
    members = filesystems[folder]
    names = [m.name for m in members]
    compilers = [n for n in names if n.startswith(("usr/bin/", "usr/local/bin/", "opt/edb/bin/"))
                 and n.rsplit("/", 1)[-1] in COMPILERS]
    assert not compilers, compilers
    assert not [n for n in names if n.startswith("usr/lib/gcc/") and n.endswith("cc1")]
    secrets_ = [n for n in names if n.endswith(SECRET_SUFFIXES) or n.rsplit("/", 1)[-1] in SECRET_NAMES]
    assert not secrets_, secrets_
    private = [m.name for m in members if m.pax_headers.get("private")]
    assert not private, f"files holding a PRIVATE KEY: {private}"
    assert not [n for n in names if "/.edb/" in f"/{n}/"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_writable_paths_are_declared_mounts(folder: str, docker_client: Any, module_images: dict[str, str],
                                            filesystems: dict[str, list[tarfile.TarInfo]]) -> None:
    uid = int(docker_client.images.get(module_images[folder]).attrs["Config"]["User"].split(":")[0])
    owned = {"/" + m.name.rstrip("/") for m in filesystems[folder] if m.uid == uid}
    undeclared = owned - _template_mount_targets(folder)
    assert not undeclared, f"{folder} owns {undeclared}, which deployment.template.json does not mount"


@pytest.mark.parametrize("folder", FOLDERS)
def test_runs_with_a_read_only_root_and_writing_to_it_fails(folder: str, docker_client: Any,
                                                            module_images: dict[str, str]) -> None:
    script = (f"import {ENTRY[folder]}\n"
              "try:\n    open('/app/written-at-run-time', 'w')\nexcept OSError as e:\n    print('refused', e.errno)\n"
              "else:\n    print('WROTE')\n")
    output = docker_client.containers.run(
        module_images[folder], ["python", "-c", script], read_only=True, cap_drop=["ALL"], network_mode="none",
        security_opt=["no-new-privileges"], remove=True, stderr=True).decode()
    assert "refused 30" in output  # EROFS
    assert "WROTE" not in output


@pytest.mark.parametrize("folder", FOLDERS)
def test_onnxruntime_telemetry_is_off_in_every_image_that_ships_it(
        folder: str, docker_client: Any, module_images: dict[str, str],
        filesystems: dict[str, list[tarfile.TarInfo]]) -> None:
    """onnxruntime 1.29+ writes a device id and sends Microsoft a process event unless switched off
    (shared/edb/ort.py): an image with it must carry the switch in its environment, whatever imports it."""
    ships_ort = any("/onnxruntime/capi/" in f"/{m.name}" for m in filesystems[folder])
    env = docker_client.images.get(module_images[folder]).attrs["Config"].get("Env") or []
    if ships_ort:
        assert "ORT_DISABLE_TELEMETRY=1" in env, f"{folder} ships onnxruntime with telemetry on: {env}"
    print(f"{folder}: onnxruntime {'shipped, telemetry off' if ships_ort else 'not shipped'}")
