"""Per-role caller uids, enforced on real processes of other users (we are root).

The device is provisioned as a real device would be: installer uid 10001, runner uid 10003, admin
uid 10005, socket shared with group 10001 (mode 0660). Each client is the real ``TeeClient`` in a
process started with ``subprocess`` ``user=<uid>``; SO_PEERCRED (recorded by the kernel at connect)
is what the TEE judges, so nothing in the client can claim another role.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tee_helpers import Device, Publisher, TeeProcess, mlp_model, release_key

import edb
from edb.tee.types import Evidence
from edb_tee.config import AccessConfig, Role

INSTALLER_UID, RUNNER_UID, ADMIN_UID, STRANGER_UID = 10001, 10003, 10005, 10099
SOCKET_GID = 10001  # the modules' shared group (edbmodule in the module images)
OTHER_GID = 10077  # a group the socket is not shared with

# The client: the repository's TeeClient under the system Python 3.11 (the venv's interpreter lives
# under /root, which other users cannot read), one JSON request per stdin line, one answer per line.
CHILD = r"""
import json, sys
from edb.errors import EdbError
from edb.tee import TeeClient
from edb.tee.context import TeeContext
from edb.tee.types import ModelHandle
import numpy as np

sock = sys.argv[1]
tee = TeeClient(sock, reconnect_s=0)
ticket = None
for line in sys.stdin:
    req = json.loads(line)
    op, out = req["op"], None
    try:
        if op == "hello":
            TeeContext(sock).close()
        elif op == "device_info":
            out = tee.device_info().to_json()
        elif op == "status":
            out = sorted(tee.status())
        elif op == "list_installed":
            out = [p.name for p in tee.list_installed()]
        elif op == "evidence":
            out = sorted(tee.get_evidence("admin-nonce").to_json())
        elif op == "begin_install":
            ticket = tee.begin_install(req["name"], req["fd"])
            out = ticket.txn
        elif op == "install_evidence":
            out = tee.get_install_evidence(ticket, "roles-nonce").to_json()
        elif op == "complete_install":
            out = tee.complete_install(ticket, req["jwe"]).package.version
        elif op == "uninstall":
            tee.uninstall(req["name"])
        elif op == "load":
            out = tee.load_model(req["name"]).to_json()
        elif op == "infer":
            y = tee.infer(ModelHandle.from_json(req["handle"]), {"input": np.ones((2, 64), np.float32)})
            out = [float(v.sum()) for v in y.values()]
        else:
            raise ValueError(op)
        print(json.dumps({"ok": True, "out": out}), flush=True)
    except EdbError as exc:
        print(json.dumps({"ok": False, "code": exc.code}), flush=True)
"""


class Client:
    """A TeeClient in a process of ``uid`` (primary group ``gid``)."""

    def __init__(self, socket: Path, uid: int, gid: int = SOCKET_GID, pass_fds: tuple[int, ...] = ()) -> None:
        # the socket's directory is reached through a descriptor: pytest's tmp dirs are 0700 root
        self._dirfd = os.open(socket.parent, os.O_PATH | os.O_DIRECTORY)
        shared = Path(edb.__file__).resolve().parents[1]
        site = Path(np.__file__).resolve().parents[1]
        env = {"PYTHONPATH": f"{shared}:{site}", "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", "-c", CHILD, f"/proc/self/fd/{self._dirfd}/{socket.name}"],
            user=uid, group=gid, extra_groups=[], pass_fds=(self._dirfd, *pass_fds), env=env, cwd="/",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __call__(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"client died: {self.proc.stderr.read() if self.proc.stderr else ''}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._dirfd)


def denied(answer: dict[str, Any]) -> bool:
    return answer == {"ok": False, "code": "TEE_ACCESS_DENIED"}


@pytest.fixture
def roles_tee(make_device) -> Iterator[tuple[Device, TeeProcess]]:
    access = AccessConfig.per_role({"installer": Role(frozenset({INSTALLER_UID})),
                                    "runner": Role(frozenset({RUNNER_UID})),
                                    "admin": Role(frozenset({ADMIN_UID}))}, socket_gid=SOCKET_GID)
    device: Device = make_device(access=access)
    tee = TeeProcess(device).start()
    try:
        yield device, tee
    finally:
        tee.stop()


@pytest.fixture
def clients(roles_tee: tuple[Device, TeeProcess]) -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def _install_as_installer(device: Device, package: Any, publisher: Publisher, clients: list[Client]) -> Client:
    fd = os.open(package.path, os.O_RDONLY)  # the installer's own download, handed over as a descriptor
    try:
        installer = Client(device.socket, INSTALLER_UID, pass_fds=(fd,))
        clients.append(installer)
        assert installer("begin_install", name="mlp", fd=fd)["ok"]
    finally:
        os.close(fd)
    evidence = Evidence.from_json(installer("install_evidence")["out"])
    jwe = release_key(evidence, package, publisher, device.manufacturer_ca)
    assert installer("complete_install", jwe=jwe) == {"ok": True, "out": "1.0.0"}
    return installer


def test_socket_is_shared_with_the_module_group_only(roles_tee: tuple[Device, TeeProcess],
                                                    clients: list[Client]) -> None:
    device, _ = roles_tee
    st = device.socket.stat()
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == SOCKET_GID
    # a process outside the group cannot even connect (the kernel refuses: EACCES)
    outsider = Client(device.socket, RUNNER_UID, gid=OTHER_GID)
    clients.append(outsider)
    assert outsider("hello") == {"ok": False, "code": "TEE_UNAVAILABLE"}


def test_unknown_uid_is_refused_at_connect(roles_tee: tuple[Device, TeeProcess], clients: list[Client]) -> None:
    device, _ = roles_tee
    stranger = Client(device.socket, STRANGER_UID)  # in the socket's group, but holding no role
    clients.append(stranger)
    assert denied(stranger("hello"))
    assert denied(stranger("device_info"))


def test_runner_role_cannot_install(roles_tee: tuple[Device, TeeProcess], clients: list[Client],
                                    make_package) -> None:
    device, _ = roles_tee
    package = make_package(mlp_model(), directory=device.layout.cache)
    fd = os.open(package.path, os.O_RDONLY)
    try:
        runner = Client(device.socket, RUNNER_UID, pass_fds=(fd,))
        clients.append(runner)
        assert denied(runner("begin_install", name="mlp", fd=fd))
    finally:
        os.close(fd)
    assert denied(runner("uninstall", name="mlp"))
    assert runner("device_info")["ok"]  # the device trusted app is open to every role


def test_installer_role_cannot_load_or_infer(roles_tee: tuple[Device, TeeProcess], clients: list[Client],
                                             make_package, publisher: Publisher) -> None:
    device, _ = roles_tee
    package = make_package(mlp_model(), directory=device.layout.cache)
    installer = _install_as_installer(device, package, publisher, clients)
    runner = Client(device.socket, RUNNER_UID)
    clients.append(runner)
    handle = runner("load", name="mlp")["out"]
    assert runner("infer", handle=handle)["ok"]
    # the installer holds a valid handle id and the model is installed: still refused
    assert denied(installer("load", name="mlp"))
    assert denied(installer("infer", handle=handle))


def test_admin_role_inspects_but_cannot_install_or_run(roles_tee: tuple[Device, TeeProcess], clients: list[Client],
                                                       make_package, publisher: Publisher) -> None:
    device, _ = roles_tee
    package = make_package(mlp_model(), directory=device.layout.cache)
    _install_as_installer(device, package, publisher, clients)
    fd = os.open(package.path, os.O_RDONLY)
    try:
        admin = Client(device.socket, ADMIN_UID, pass_fds=(fd,))
        clients.append(admin)
        assert admin("device_info")["out"]["deviceId"] == device.layout.root.name
        assert {"bootId", "models", "installs"} <= set(admin("status")["out"])
        assert admin("list_installed") == {"ok": True, "out": ["mlp"]}
        assert admin("evidence")["ok"]
        assert denied(admin("begin_install", name="mlp", fd=fd))
    finally:
        os.close(fd)
    assert denied(admin("uninstall", name="mlp"))
    assert denied(admin("load", name="mlp"))
