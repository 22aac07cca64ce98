"""The socket boundary of the real TEE service: handshake, hostile frames, descriptor passing,
sessions, the peer-credential allow-list, evidence bounds, file modes and process hardening."""

from __future__ import annotations

import base64
import datetime as dt
import os
import socket
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from tee_helpers import EVENT_BOUND_S, START_BOUND_S, Device, TeeProcess, wait_until

from edb.attestation.evidence import verify_evidence
from edb.errors import EdbError
from edb.pki.chain import verify_chain
from edb.pki.oids import DEVICE_ATTESTATION_EKU
from edb.tee import DEVICE_TA, INSTALLER_TA, RUNNER_TA, TeeClient, TeeContext
from edb.tee.commands import DeviceCmd
from edb.tee.protocol import (
    Blob,
    Limits,
    Message,
    MsgType,
    Op,
    Text,
    Value,
    decode,
    frame_bytes,
    hello_request,
)
from edb.tee.transport import PeerClosed, recv_frame, socket_address
from edb_tee.config import AccessConfig, Role


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(EVENT_BOUND_S)
    with socket_address(path) as address:
        s.connect(address)
    return s


def reply(s: socket.socket) -> Message:
    body, _ = recv_frame(s, Limits())
    return decode(body)


def error_code(msg: Message) -> str:
    assert msg.status == 1
    return msg.params[0].text  # type: ignore[union-attr]


def assert_closed(s: socket.socket) -> None:
    with pytest.raises((PeerClosed, EdbError, ConnectionError)):
        recv_frame(s, Limits())


def hello(path: Path) -> socket.socket:
    s = connect(path)
    s.sendall(frame_bytes(hello_request()))
    r = reply(s)
    assert r.status == 0 and isinstance(r.params[0], Value) and r.params[0].a == 1
    return s


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_hostile_frames_are_refused_and_the_service_survives(tee: TeeProcess, device: Device) -> None:
    before = fd_count(tee.pid)
    # a frame length far above the limit, before and after the handshake
    for handshake in (False, True):
        s = hello(device.socket) if handshake else connect(device.socket)
        s.sendall(struct.pack("<I", 1 << 30))
        assert error_code(reply(s)) == "TEE_FRAME_TOO_LARGE"
        assert_closed(s)
        s.close()
    # garbage instead of a hello; a wrong magic; a version we do not speak
    for payload in (os.urandom(40), frame_bytes(Message(MsgType.REQUEST, Op.HELLO, params=[Blob(b"NOTEDB"),
                                                                                            Value(1, 1)]))[4:],
                    frame_bytes(hello_request(7, 9))[4:]):
        s = connect(device.socket)
        s.sendall(struct.pack("<I", len(payload)) + payload)
        assert error_code(reply(s)) in ("TEE_PROTOCOL", "TEE_VERSION")
        assert_closed(s)
        s.close()
    # a malformed request after the handshake
    s = hello(device.socket)
    s.sendall(struct.pack("<I", 24) + b"\x01\x02\x01\x00" + b"\0" * 16 + b"\x63\0\0\0")
    assert error_code(reply(s)) == "TEE_PROTOCOL"
    assert_closed(s)
    s.close()
    # a frame cut short by a disconnect
    s = hello(device.socket)
    s.sendall(struct.pack("<I", 1000) + b"\x01" * 10)
    s.close()
    # descriptors the request does not use, and too many descriptors: closed by the service
    s = hello(device.socket)
    extra = [os.open(os.devnull, os.O_RDONLY) for _ in range(6)]
    frame = frame_bytes(Message(MsgType.REQUEST, Op.OPEN_SESSION, 1, params=[Blob(DEVICE_TA.bytes)]))
    s.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("2i", *extra[:2]))])
    assert reply(s).status == 0
    s.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("6i", *extra))])
    assert error_code(reply(s)) == "TEE_PROTOCOL"
    s.close()
    for fd in extra:
        os.close(fd)
    # still serving, nothing leaked (the service closes each connection's descriptor on its own thread,
    # after our close returned: wait for it; a leaked descriptor never goes)
    with TeeClient(device.socket) as c:
        assert c.device_info().device_id == "dev-1"
    wait_until(lambda: fd_count(tee.pid) <= before + 1, "the service closes the connections' descriptors")


def test_sessions_commands_and_parameters(tee: TeeProcess, device: Device) -> None:
    with TeeContext(device.socket) as ctx:
        with pytest.raises(EdbError) as err:
            ctx.open_session("00000000-0000-0000-0000-000000000000")
        assert err.value.code == "TEE_UNKNOWN_TA"
        s = ctx.open_session(DEVICE_TA)
        with pytest.raises(EdbError) as err:
            s.invoke(99)
        assert err.value.code == "TEE_UNKNOWN_COMMAND"
        with pytest.raises(EdbError) as err:
            s.invoke(DeviceCmd.GET_EVIDENCE, [Value(1)])
        assert err.value.code == "TEE_BAD_PARAMETERS"
        s.close()
        with pytest.raises(EdbError) as err:
            s.invoke(DeviceCmd.DEVICE_INFO)
        assert err.value.code == "TEE_UNKNOWN_SESSION"


def test_evidence_is_signed_by_a_certified_attestation_key(client: TeeClient, device: Device) -> None:
    ev = client.get_evidence("a" * 128, b"user-data")
    leaf = x509.load_der_x509_certificate(base64.b64decode(ev.cert_chain[0]))
    verify_chain(leaf, [], [device.manufacturer_ca], now=dt.datetime.now(dt.UTC), required_eku=DEVICE_ATTESTATION_EKU,
                 require_digital_signature=True)
    claims = verify_evidence(ev.jws, leaf.public_key())  # type: ignore[arg-type]
    info = client.device_info()
    assert claims.device_id == "dev-1" == leaf.subject.rfc4514_string().split("CN=")[1].split(",")[0]
    assert claims.tee_measurement == info.measurement and claims.tee_svn == info.tee_svn
    assert claims.user_data == b"user-data" and claims.package is None
    two = client.get_evidence("b", b"")
    assert two.one_time_jwk != ev.one_time_jwk  # a fresh one-time key every time


def test_oversized_nonce_and_user_data_are_refused(client: TeeClient, tee: TeeProcess, device: Device) -> None:
    with pytest.raises(EdbError) as err:
        client.get_evidence("n" * 129)
    assert err.value.code == "ATT_NONCE_TOO_LARGE"
    with pytest.raises(EdbError) as err:
        client.get_evidence("n", b"u" * 1025)
    assert err.value.code == "ATT_EVIDENCE_MALFORMED"
    # a nonce beyond the protocol's text bound never reaches the trusted app
    s = hello(device.socket)
    s.sendall(frame_bytes(Message(MsgType.REQUEST, Op.OPEN_SESSION, 1, params=[Blob(DEVICE_TA.bytes)])))
    sid = reply(s).params[0].a  # type: ignore[union-attr]
    huge = b"n" * 100_000
    body = bytearray(frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, 2, sid, DeviceCmd.GET_EVIDENCE,
                                         params=[Text("x"), Blob(b"")]))[4:])
    # replace the 1-char text by a 100 kB one
    i = body.index(b"\x03\x01\x00\x00\x00x")
    body[i:i + 6] = b"\x03" + struct.pack("<I", len(huge)) + huge
    s.sendall(struct.pack("<I", len(body)) + body)
    assert error_code(reply(s)) == "TEE_PROTOCOL"
    s.close()
    assert client.device_info().device_id == "dev-1"


def test_files_and_socket_modes(tee: TeeProcess, device: Device) -> None:
    assert stat.S_IMODE(device.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(device.layout.tee.stat().st_mode) == 0o700
    for f in (device.layout.huk, device.layout.rpmb, device.layout.config):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_process_hardening(tee: TeeProcess, client: TeeClient) -> None:
    limits = Path(f"/proc/{tee.pid}/limits").read_text()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"]
    assert client.status()["hardening"]["dumpable"] is False


_CHILD = """
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect(sys.argv[1])
for frame in sys.argv[2:]:
    s.sendall(bytes.fromhex(frame))
    head = s.recv(4, socket.MSG_WAITALL)
    if len(head) < 4:
        break
    print(s.recv(struct.unpack("<I", head)[0], socket.MSG_WAITALL).hex(), flush=True)
"""


def as_user(sock: Path, uid: int, frames: list[bytes]) -> list[Message]:
    """Run a stdlib-only client as another user (we are root) and return the replies it got."""
    dirfd = os.open(sock.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        out = subprocess.run(["/usr/bin/python3", "-c", _CHILD, f"/proc/self/fd/{dirfd}/{sock.name}",
                              *[f.hex() for f in frames]],
                             user=uid, group=uid, pass_fds=[dirfd], capture_output=True, text=True,
                             timeout=START_BOUND_S)
    finally:
        os.close(dirfd)
    assert out.returncode == 0, out.stderr
    return [decode(bytearray(bytes.fromhex(line))) for line in out.stdout.split()]


def test_caller_not_on_the_allow_list(make_device) -> None:
    me = os.getuid()
    other = 65534 if me == 0 else me + 1
    # the installer role belongs to someone else; we only hold the runner role
    dev = make_device(access=AccessConfig({"installer": Role(frozenset({other})), "runner": Role(frozenset({me}))}))
    proc = TeeProcess(dev).start()
    try:
        with TeeContext(dev.socket) as ctx:
            ctx.open_session(RUNNER_TA).close()
            ctx.open_session(DEVICE_TA).close()
            with pytest.raises(EdbError) as err:
                ctx.open_session(INSTALLER_TA)
            assert err.value.code == "TEE_ACCESS_DENIED"
        if me == 0:
            # processes of other users: even with the socket file opened up, SO_PEERCRED decides
            os.chmod(dev.socket, 0o666)  # noqa: S103 - deliberately loosened for the test
            open_runner = frame_bytes(Message(MsgType.REQUEST, Op.OPEN_SESSION, 2, params=[Blob(RUNNER_TA.bytes)]))
            open_installer = frame_bytes(Message(MsgType.REQUEST, Op.OPEN_SESSION, 3,
                                                 params=[Blob(INSTALLER_TA.bytes)]))
            stranger = as_user(dev.socket, 65533, [frame_bytes(hello_request())])
            assert error_code(stranger[0]) == "TEE_ACCESS_DENIED"
            installer = as_user(dev.socket, other, [frame_bytes(hello_request()), open_runner, open_installer])
            assert installer[0].status == 0
            assert error_code(installer[1]) == "TEE_ACCESS_DENIED"  # installer role may not run models
            assert installer[2].status == 0
    finally:
        proc.stop()
    # nobody at all on the list: refused at the handshake
    dev2 = make_device("dev-2", access=AccessConfig({"installer": Role(frozenset({other})),
                                                      "runner": Role(frozenset({other}))}))
    proc = TeeProcess(dev2).start()
    try:
        with pytest.raises(EdbError) as err:
            TeeContext(dev2.socket)
        assert err.value.code == "TEE_ACCESS_DENIED"
    finally:
        proc.stop()


def test_one_service_per_device_and_unprovisioned(tee: TeeProcess, device: Device, tmp_path: Path) -> None:
    second = subprocess.run([os.sys.executable, "-m", "edb_tee", "serve", "--device-dir", str(device.layout.root),
                             "--socket", str(tmp_path / "other.sock")], capture_output=True, text=True, timeout=60)
    assert second.returncode != 0 and "TEE_STATE_LOCKED" in second.stderr
    empty = tmp_path / "devices" / "ghost"
    empty.mkdir(parents=True)
    out = subprocess.run([os.sys.executable, "-m", "edb_tee", "serve", "--device-dir", str(empty)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "TEE_NOT_PROVISIONED" in out.stderr
