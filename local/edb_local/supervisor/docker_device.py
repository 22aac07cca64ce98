"""The device's TEE in a container (``edb local up --runtime docker``): factory provisioning.

On a device the TEE's state is made once, at the factory, before any module runs. Here that is a
one-shot container of the ``tee_service`` image (the same code that will serve), run as root (the
factory station), with no network, a read-only root and:

- the stack's TEE state volume (``edb-<stack>-edb-tee-state``, the manifest's ``edb-tee-state``,
  which the TEE container mounts at ``/var/lib/edb-tee``) as ``/factory/devices``: the device
  directory is ``<volume>/<device id>`` (the TEE derives its keys' context from that name);
- the manufacturer CA (made on the host: the factory's, never on the device) read-only at
  ``/factory/manufacturer``; the publisher root read-only;
- the allow-list of the images' uids: installer 10001, runner 10003, admin 0, socket group 10001;

then the device directory is handed to the TEE's uid (10002). The volume exists only once that
succeeded (it is removed otherwise), so "volume present" means "device provisioned".
"""

from __future__ import annotations

import json
import os
import platform as host_platform
from pathlib import Path
from typing import Any

import docker
import docker.errors

from edb_local.agent.containers import LABEL_STACK, stack_id, volume_name
from edb_local.supervisor.context import StackContext
from edb_local.supervisor.errors import DEVICE_PROVISION, SupervisorError

TEE_STATE_VOLUME = "edb-tee-state"  # deployment.template.json: tee_service's state bind
TEE_UID, MODULE_GID = 10002, 10001  # modules/tee_service/Dockerfile.*: USER 10002:10001
INSTALLER_UID, RUNNER_UID, ADMIN_UID = 10001, 10003, 0
LABEL_DEVICE = "org.edb.device"
FACTORY = "/factory"


def host_image_platform() -> str:
    """The module images' platform (module.json names): EDB_IMAGE_PLATFORM, else the host's."""
    chosen = os.environ.get("EDB_IMAGE_PLATFORM")
    if chosen in ("amd64", "arm64v8"):
        return chosen
    return "arm64v8" if host_platform.machine() in ("aarch64", "arm64") else "amd64"


def module_image(ctx: StackContext, folder: str) -> str:
    """The tag `edb images build` gives the module (and the template expands to)."""
    doc = json.loads((ctx.root / "modules" / folder / "module.json").read_text())
    registry = os.environ.get("CONTAINER_REGISTRY_SERVER") or "localhost:5000"
    repository = str(doc["image"]["repository"]).replace("${CONTAINER_REGISTRY_SERVER}", registry)
    return f"{repository}:{doc['image']['tag']['version']}-{host_image_platform()}"


def provision_command(device_id: str, *, legacy_v1: bool) -> list[str]:
    """What the factory container runs (pure): provision with the images' allow-list, then give
    the device directory to the TEE's uid."""
    device_dir = f"{FACTORY}/devices/{device_id}"
    provision = ["python", "-m", "edb.cli.main", "device", "provision", "--device-id", device_id,
                 "--state-dir", FACTORY, "--publisher-root", f"{FACTORY}/publisher-root.pem",
                 "--installer-uid", str(INSTALLER_UID), "--runner-uid", str(RUNNER_UID),
                 "--admin-uid", str(ADMIN_UID), "--socket-gid", str(MODULE_GID),
                 *(["--allow-legacy-v1"] if legacy_v1 else [])]
    quoted = " ".join(f"'{arg}'" for arg in provision)
    return ["/bin/sh", "-c", f"{quoted} && chown -R {TEE_UID}:{MODULE_GID} '{device_dir}' "
                             f"&& chmod 0700 '{device_dir}'"]


def docker_api() -> Any:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        raise SupervisorError(f"Docker Engine not reachable: {type(exc).__name__}", code=DEVICE_PROVISION) from None
    return client.api


def prepare_tee_socket_dir(ctx: StackContext) -> None:
    """The host directory the TEE container makes its socket in (bound at /run/edb-tee into the
    TEE, installer and runner): the TEE's uid owns it, its group may enter it."""
    directory = ctx.tee_socket_dir
    directory.mkdir(parents=True, exist_ok=True)
    os.chown(directory, TEE_UID, MODULE_GID)
    os.chmod(directory, 0o750)  # noqa: S103 - the TEE socket group enters it (the socket is 0660)


def provision_device_in_container(ctx: StackContext) -> str:
    from edb_tee.manufacturer import ManufacturerCA

    api = docker_api()
    stack = stack_id(ctx.paths.root)
    volume = volume_name(stack, TEE_STATE_VOLUME)
    try:
        existing = api.inspect_volume(volume)
        if (existing.get("Labels") or {}).get(LABEL_DEVICE) == ctx.device_id:
            return f"device {ctx.device_id} already provisioned in volume {volume}"
        raise SupervisorError(f"volume {volume} holds another device's state", code=DEVICE_PROVISION)
    except docker.errors.NotFound:
        pass
    root = ctx.paths.root.resolve()
    ManufacturerCA.load_or_create(root / "manufacturer")  # the factory's CA, on the host
    publisher_root = root / "pki" / "root.pem"
    if not publisher_root.exists():
        raise SupervisorError(f"no publisher root at {publisher_root} (edb pki init)", code=DEVICE_PROVISION)
    image = module_image(ctx, "tee_service")
    api.create_volume(volume, labels={LABEL_STACK: stack, LABEL_DEVICE: ctx.device_id})
    host_config = api.create_host_config(
        binds=[f"{volume}:{FACTORY}/devices", f"{root / 'manufacturer'}:{FACTORY}/manufacturer:ro",
               f"{publisher_root}:{FACTORY}/publisher-root.pem:ro"],
        network_mode="none", read_only=True, security_opt=["no-new-privileges"],
        tmpfs={"/tmp": "size=16m"},  # noqa: S108 - the container's own tmpfs
    )
    container = None
    try:
        container = api.create_container(image, provision_command(ctx.device_id, legacy_v1=ctx.settings.legacy_v1),
                                         user="0", host_config=host_config, labels={LABEL_STACK: stack},
                                         name=f"edb-{stack}-factory-provisioning")
        api.start(container["Id"])
        code = int(api.wait(container["Id"], timeout=300).get("StatusCode", -1))
        output = api.logs(container["Id"]).decode(errors="replace")
        if code != 0:
            raise SupervisorError(f"provisioning container exited with {code}: {output.strip()[-400:]}",
                                  code=DEVICE_PROVISION)
    except docker.errors.DockerException as exc:
        api.remove_volume(volume, force=True)
        raise SupervisorError(f"provisioning in {image} failed: {exc}", code=DEVICE_PROVISION) from None
    except SupervisorError:
        api.remove_volume(volume, force=True)
        raise
    finally:
        if container is not None:
            api.remove_container(container["Id"], force=True)
    return f"device {ctx.device_id} provisioned in volume {volume}"


def remove_stack_objects(state_dir: Path, *, volumes: bool) -> dict[str, int]:
    """``edb local down``: this stack's containers (always) and volumes (``--volumes`` only: they
    are the device's state, kept across restarts like the process runtime's .edb/devices)."""
    from edb_local.agent.docker_runner import remove_stack_containers, remove_stack_volumes

    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException:
        return {}
    stack = stack_id(state_dir)
    result = {"containers": remove_stack_containers(client.api, stack)}
    if volumes:
        result["volumes"] = remove_stack_volumes(client.api, stack)
    return result


def stack_containers(state_dir: Path) -> list[str]:
    """Names of this stack's containers still there (none after `edb local down`)."""
    try:
        client = docker.from_env(timeout=60)
        found = client.api.containers(all=True, filters={"label": f"{LABEL_STACK}={stack_id(state_dir)}"})
    except docker.errors.DockerException as exc:
        return [f"(Docker Engine unreachable: {type(exc).__name__})"]
    return [str((c.get("Names") or ["?"])[0]).lstrip("/") for c in found]
