"""The TEE as a container: provisioned once by the factory container with the images' allow-list,
serving from its state volume, and that allow-list enforced across containers (SO_PEERCRED sees each
container's uid on the same kernel): installer 10001, runner 10003, nobody else."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from edb.pki.devpki import init_publisher_pki
from edb_local.agent.containers import stack_id, volume_name
from edb_local.supervisor.context import StackContext
from edb_local.supervisor.docker_device import (
    TEE_STATE_VOLUME,
    prepare_tee_socket_dir,
    provision_device_in_container,
    remove_stack_objects,
)
from edb_local.supervisor.settings import StackPaths, StackSettings

CLIENT = """
from edb.errors import EdbError
from edb.tee.client import TeeClient
tee = TeeClient('/run/edb-tee/tee.sock')
for name, call in (('installed', tee.list_installed), ('load', lambda: tee.load_model('not-installed')),
                   ('install', lambda: tee.begin_install('x', '/dev/null'))):
    try:
        call()
        print(name, 'ok')
    except EdbError as exc:
        print(name, exc.code)
"""

# The first test may build the images on a cold machine (base image, wheelhouse, five modules).
pytestmark = pytest.mark.timeout(1800)


def _outcomes(output: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in output.strip().splitlines() if line.split(" ")[0] in
                ("installed", "load", "install"))


@pytest.fixture
def tee_container(tmp_path: Path, docker_client: Any, module_images: dict[str, str]) -> Any:
    state = tmp_path / "s"
    device = "tee-ctr-" + uuid.uuid4().hex[:6]
    ctx = StackContext(StackPaths(state), StackSettings(address="127.0.0.1", device_id=device, runtime="docker"))
    ctx.paths.ensure()
    init_publisher_pki(state / "pki")
    assert "provisioned" in provision_device_in_container(ctx)
    assert "already provisioned" in provision_device_in_container(ctx)  # once: the factory's job
    prepare_tee_socket_dir(ctx)
    volume = volume_name(stack_id(state), TEE_STATE_VOLUME)
    tee = docker_client.containers.run(
        module_images["tee_service"], detach=True, read_only=True, cap_drop=["ALL"], network_mode="none",
        security_opt=["no-new-privileges"], environment={"IOTEDGE_DEVICEID": device},
        volumes=[f"{ctx.tee_socket_dir}:/run/edb-tee", f"{volume}:/var/lib/edb-tee"])
    try:
        deadline = time.monotonic() + 60
        while not ctx.tee_socket.exists():
            tee.reload()
            assert tee.status == "running" and time.monotonic() < deadline, tee.logs().decode()[-2000:]
            time.sleep(0.2)
        yield ctx, tee
    finally:
        tee.remove(force=True)
        assert remove_stack_objects(state, volumes=True) == {"containers": 0, "volumes": 1}


@pytest.mark.parametrize(("user", "expected"), [
    ("10003:10001", {"installed": "ok", "install": "TEE_ACCESS_DENIED"}),  # the runner image's uid
    ("10001:10001", {"installed": "ok", "load": "TEE_ACCESS_DENIED"}),  # the installer image's uid
    ("10005:10001", {"installed": "TEE_ACCESS_DENIED", "load": "TEE_ACCESS_DENIED",
                     "install": "TEE_ACCESS_DENIED"}),  # in the socket's group, but holds no role
    ("10004:10004", {"installed": "TEE_UNAVAILABLE"}),  # not in the socket's group: cannot even connect
])
def test_the_allow_list_is_enforced_across_containers(tee_container: Any, docker_client: Any,
                                                      module_images: dict[str, str], user: str,
                                                      expected: dict[str, str]) -> None:
    ctx, tee = tee_container
    output = docker_client.containers.run(
        module_images["inference_runner"], ["python", "-c", CLIENT], user=user, read_only=True, cap_drop=["ALL"],
        network_mode="none", volumes=[f"{ctx.tee_socket_dir}:/run/edb-tee"], remove=True).decode()
    outcomes = _outcomes(output)
    for call, code in expected.items():
        assert outcomes.get(call) == code, output
    if user == "10003:10001":
        assert outcomes["load"] not in ("ok", "TEE_ACCESS_DENIED")  # the runner may ask; nothing installed
    logs = tee.logs().decode()
    assert "per-role: admin uids=[0]" in logs and "installer uids=[10001]" in logs and "runner uids=[10003]" in logs
