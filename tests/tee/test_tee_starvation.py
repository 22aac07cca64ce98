"""A runner-role process using everything it may cannot stop an install (issue 13, item 1).

The device is provisioned with per-role uids (as in test_roles.py: we are root, the clients are real
processes of other uids, SO_PEERCRED decides). Runner-role processes open connections until the TEE
refuses them and half-send frames that declare the maximum size; the installer and admin still get
through, a stalled frame is dropped at its deadline, and the TEE's memory stays bounded.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tee_helpers import EVENT_BOUND_S, Device, Publisher, TeeProcess
from test_roles import ADMIN_UID, INSTALLER_UID, RUNNER_UID, SOCKET_GID, Client, _install_as_installer

import edb
from edb.tee import DEVICE_TA, TeeContext
from edb.tee.commands import DeviceCmd
from edb.tee.protocol import FRAME_LENGTH, Limits, decode, frame_bytes, hello_request
from edb.tee.transport import PeerClosed, recv_frame, socket_address
from edb_tee.config import AccessConfig, MeasuredConfig, Role
from edb_tee.quotas import connection_quota, frame_memory_quota

MIB = 1 << 20
MAX_FRAME = 8 * MIB
PENDING = 32 * MIB
MEASURED = MeasuredConfig(max_frame_bytes=MAX_FRAME, max_pending_frame_bytes=PENDING, frame_deadline_s=120)

# A runner-role process doing all it may: frames declaring MAX_FRAME, half sent, on new connections
# until the TEE refuses one; then idle connections until the TEE refuses those too. It reports what
# it holds, then holds it until its stdin closes.
ATTACKER = r"""
import json, socket, sys
from edb.tee import DEVICE_TA, TeeContext
from edb.tee.commands import DeviceCmd
from edb.tee.protocol import FRAME_LENGTH, Limits, decode, frame_bytes, hello_request
from edb.tee.transport import recv_frame

path, declare = sys.argv[1], int(sys.argv[2])
held, out = [], {"frames": 0, "idle": 0, "frame_refusals": [], "hello_refusals": []}

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    s.sendall(frame_bytes(hello_request()))
    reply = decode(recv_frame(s, Limits())[0])
    if reply.status != 0:
        out["hello_refusals"].append(reply.params[0].text)
        s.close()
        return None
    return s

while True:  # 1: stalled frames
    s = connect()
    if s is None:
        break
    try:
        s.sendall(FRAME_LENGTH.pack(declare) + bytes(declare // 2))  # more than any socket buffer holds
        held.append(s)
        out["frames"] += 1
    except OSError:
        try:
            out["frame_refusals"].append(decode(recv_frame(s, Limits())[0]).params[0].text)
        except Exception as exc:
            out["frame_refusals"].append(type(exc).__name__)
        s.close()
        break
while True:  # 2: idle connections
    s = connect()
    if s is None:
        break
    held.append(s)
    out["idle"] += 1
print(json.dumps(out), flush=True)
sys.stdin.read()
"""


class Attacker:
    def __init__(self, socket_path: Path, uid: int) -> None:
        self._dirfd = os.open(socket_path.parent, os.O_PATH | os.O_DIRECTORY)
        shared = Path(edb.__file__).resolve().parents[1]
        site = Path(np.__file__).resolve().parents[1]
        env = {"PYTHONPATH": f"{shared}:{site}", "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", "-c", ATTACKER, f"/proc/self/fd/{self._dirfd}/{socket_path.name}", str(MAX_FRAME)],
            user=uid, group=SOCKET_GID, extra_groups=[], pass_fds=(self._dirfd,), env=env, cwd="/",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def report(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"attacker died: {self.proc.stderr.read() if self.proc.stderr else ''}"
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._dirfd)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def quota_tee(make_device) -> Iterator[tuple[Device, TeeProcess]]:  # type: ignore[no-untyped-def]
    access = AccessConfig.per_role({"installer": Role(frozenset({INSTALLER_UID})),
                                    "runner": Role(frozenset({RUNNER_UID})),
                                    "admin": Role(frozenset({ADMIN_UID}))}, socket_gid=SOCKET_GID)
    device: Device = make_device(access=access, measured=MEASURED)
    tee = TeeProcess(device).start()
    try:
        yield device, tee
    finally:
        tee.stop()


def test_runner_role_using_all_it_may_cannot_stop_an_install(quota_tee: tuple[Device, TeeProcess], make_package,
                                                             publisher: Publisher) -> None:
    device, tee = quota_tee
    conns, memory = connection_quota(MEASURED.max_connections), frame_memory_quota(PENDING)
    attackers: list[Attacker] = []
    clients: list[Client] = []
    try:
        warm = Client(device.socket, ADMIN_UID)  # the TEE's first answers load code: before the baseline
        clients.append(warm)
        assert warm("status")["ok"]
        rss_before = rss_kib(tee.pid)
        reports = []
        # more processes than one may hold: the role's share bounds them all together
        for _ in range(conns.shared // conns.per_pid + 2):
            attacker = Attacker(device.socket, RUNNER_UID)
            attackers.append(attacker)
            reports.append(attacker.report())
        held = sum(r["frames"] + r["idle"] for r in reports)
        frames = sum(r["frames"] for r in reports)
        assert held == conns.shared - 1  # every shared connection (but the admin's warm one), no reserved one
        assert frames == (memory.shared // MAX_FRAME)  # as many stalled frames as the shared memory holds
        assert {code for r in reports for code in r["hello_refusals"]} == {"TEE_BUSY"}
        assert {code for r in reports for code in r["frame_refusals"]} <= {"TEE_BUSY", "ConnectionResetError"}
        assert any(r["frame_refusals"] for r in reports)
        # the TEE holds at most the declared length of the frames it admitted (half of it received)
        assert (rss_kib(tee.pid) - rss_before) * 1024 < PENDING + 16 * MIB

        another_runner = Client(device.socket, RUNNER_UID)
        clients.append(another_runner)
        assert another_runner("hello") == {"ok": False, "code": "TEE_BUSY"}
        # the install goes through (its own reserve), and so does the operator's inspection
        installer = _install_as_installer(device, make_package(), publisher, clients)
        assert installer("list_installed") == {"ok": True, "out": ["mlp"]}
        admin = Client(device.socket, ADMIN_UID)
        clients.append(admin)
        assert admin("list_installed") == {"ok": True, "out": ["mlp"]}
    finally:
        for c in clients:
            c.close()
        for a in attackers:
            a.close()
    # the attackers are gone: their connections and frame memory are back, a runner gets in again
    runner = Client(device.socket, RUNNER_UID)
    try:
        deadline = time.monotonic() + EVENT_BOUND_S
        while (answer := runner("hello")) != {"ok": True, "out": None} and time.monotonic() < deadline:
            time.sleep(0.05)  # the TEE notices the closed connections as it reads them
        assert answer == {"ok": True, "out": None}
    finally:
        runner.close()


def _hello(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(EVENT_BOUND_S + 10)  # a safety net: the TEE answers long before
    with socket_address(path) as address:
        s.connect(address)
    s.sendall(frame_bytes(hello_request()))
    assert decode(recv_frame(s, Limits())[0]).status == 0
    return s


def test_stalled_and_trickled_frames_are_dropped_after_their_deadline(make_device) -> None:  # type: ignore[no-untyped-def]
    device: Device = make_device(measured=MeasuredConfig(frame_deadline_s=1))
    tee = TeeProcess(device).start()
    try:
        stalled = _hello(device.socket)
        stalled.sendall(FRAME_LENGTH.pack(MIB) + bytes(1000))  # then nothing
        trickled = _hello(device.socket)
        trickled.sendall(FRAME_LENGTH.pack(MIB))
        stop = threading.Event()

        def trickle() -> None:  # a byte every 0.2 s: never silent for long, never finishing
            while not stop.wait(0.2):
                try:
                    trickled.send(b"\0")
                except OSError:
                    return

        worker = threading.Thread(target=trickle, daemon=True)
        worker.start()
        try:
            for s in (stalled, trickled):
                reply = decode(recv_frame(s, Limits())[0])
                assert reply.status == 1 and reply.params[0].text == "TEE_FRAME_TIMEOUT"  # type: ignore[union-attr]
                with pytest.raises((PeerClosed, ConnectionError)):
                    recv_frame(s, Limits())  # then closed
        finally:
            stop.set()
            worker.join()
            stalled.close()
            trickled.close()
        # idle between requests is fine however long (past the frame deadline), on the same connection
        with TeeContext(device.socket) as ctx:
            session = ctx.open_session(DEVICE_TA)
            time.sleep(1.5)
            assert session.invoke(DeviceCmd.DEVICE_INFO)
            session.close()
    finally:
        tee.stop()
