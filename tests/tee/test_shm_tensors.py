"""Large tensors through a shared-memory region (edb.tee.shm) against the real TEE service: results
equal to the socket path's, small and string tensors still inline, hostile regions and region
tensors refused with their codes while the service keeps serving."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper
from tee_helpers import Device, Publisher, TeeProcess, install, wait_until

import edb.tee.context as context_module
from edb.errors import EdbError
from edb.tee import RUNNER_TA, TeeClient, TeeContext, TeeSession
from edb.tee.commands import LOAD_PREPACK, RunnerCmd
from edb.tee.protocol import (
    Fd,
    Limits,
    Message,
    MsgType,
    Op,
    ShmTensor,
    Tensor,
    Text,
    Value,
    decode,
    encode,
    frame_bytes,
)
from edb.tee.shm import MAX_REGION_BYTES, check_range, check_region, create_region
from edb.tee.transport import recv_reply

pytestmark = pytest.mark.timeout(180)

THRESHOLD = 256 * 1024
ROWS, COLS = 4, 128 * 1024  # float32 and int64 inputs of 2 MiB and 4 MiB, uint8 of 512 KiB


def mixed_model() -> bytes:
    """float32 -> Relu, uint8 -> Identity, int64 -> Neg, string -> Identity: every kind at once."""
    nodes = [helper.make_node("Relu", ["f"], ["f_out"]), helper.make_node("Identity", ["u"], ["u_out"]),
             helper.make_node("Neg", ["i"], ["i_out"]), helper.make_node("Identity", ["s"], ["s_out"])]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "mixed",
        [vi("f", TensorProto.FLOAT, [None, None]), vi("u", TensorProto.UINT8, [None, None]),
         vi("i", TensorProto.INT64, [None, None]), vi("s", TensorProto.STRING, [None])],
        [vi("f_out", TensorProto.FLOAT, [None, None]), vi("u_out", TensorProto.UINT8, [None, None]),
         vi("i_out", TensorProto.INT64, [None, None]), vi("s_out", TensorProto.STRING, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def feeds(rows: int = ROWS, cols: int = COLS, seed: int = 0, text: str = "label") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"f": rng.standard_normal((rows, cols), dtype=np.float32),
            "u": rng.integers(0, 256, (rows, cols), dtype=np.uint8),
            "i": rng.integers(-(1 << 40), 1 << 40, (rows, cols), dtype=np.int64),
            "s": np.array([f"{text}-{r}" for r in range(rows)], dtype=object)}


def expected(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"f_out": np.maximum(x["f"], 0), "u_out": x["u"], "i_out": -x["i"], "s_out": x["s"]}


def assert_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == (object if v.dtype == object else v.dtype), k
        np.testing.assert_array_equal(got[k], v)


class Sent:
    """Records the request frames the client library encodes (the real encoders, called through)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frames: list[Message] = []
        for name in ("encode_fields", "encode_tensors"):
            real = getattr(context_module, name)

            def record(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
                parts = _real(*args, **kwargs)
                self.frames.append(decode(bytearray(b"".join(bytes(p) for p in parts)[4:]), nfds=4))
                return parts

            monkeypatch.setattr(context_module, name, record)

    def last_infer(self) -> dict[str, type]:
        msg = [m for m in self.frames if m.op == Op.INVOKE and m.command == RunnerCmd.INFER][-1]
        return {p.name: type(p) for p in msg.params[1:]}  # type: ignore[union-attr]


@pytest.fixture
def mixed(client: TeeClient, make_package, publisher: Publisher, device: Device) -> str:
    install(client, make_package(mixed_model(), package_id="mixed"), publisher, device, name="mixed")
    return "mixed"


@pytest.fixture
def inline_client(tee: TeeProcess) -> Iterator[TeeClient]:
    c = tee.client(shm_threshold=None)
    yield c
    c.close()


def tee_maps_regions(pid: int) -> int:
    return sum("memfd:edb-tee-tensors" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


def tee_holds_regions(pid: int) -> int:
    """Region descriptors the TEE holds (it never maps one: see edb.tee.shm.open_region)."""
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            held += "memfd:edb-tee-tensors" in os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
    return held


def test_large_tensors_round_trip_through_the_region_equal_to_the_socket_path(
        tee: TeeProcess, client: TeeClient, inline_client: TeeClient, mixed: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent = Sent(monkeypatch)
    h, h_inline = client.load_model(mixed), inline_client.load_model(mixed)
    results = []
    for seed in range(3):
        x = feeds(seed=seed)
        got = client.infer(h, x)
        assert sent.last_infer() == {"f": ShmTensor, "u": ShmTensor, "i": ShmTensor, "s": Tensor}
        via_socket = inline_client.infer(h_inline, x)
        assert sent.last_infer() == {"f": Tensor, "u": Tensor, "i": Tensor, "s": Tensor}
        assert_equal(got, expected(x))
        assert_equal(via_socket, got)
        results.append((x, got))
    for x, got in results:  # results are copies: the next calls, which reuse the region, changed none
        assert_equal(got, expected(x))
        assert all(got[k].flags.writeable and got[k].flags.owndata for k in ("f_out", "u_out", "i_out"))
    assert tee_holds_regions(tee.pid) == 1  # one region: one pooled connection
    assert tee_maps_regions(tee.pid) == 0  # held as a descriptor, never mapped: no fault can stop the TEE


def test_a_batch_through_the_region_equals_the_socket_path(client: TeeClient, inline_client: TeeClient,
                                                            mixed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = Sent(monkeypatch)
    h, h_inline = client.load_model(mixed), inline_client.load_model(mixed)
    batch = [feeds(rows=r, cols=64 * 1024, seed=r) for r in (1, 2, 3)]  # stacked: 6 rows of 64 K elements
    got = client.infer_many(h, batch)
    assert sent.last_infer() == {"f": ShmTensor, "u": ShmTensor, "i": ShmTensor, "s": Tensor}
    via_socket = inline_client.infer_many(h_inline, batch)
    for x, a, b in zip(batch, got, via_socket, strict=True):
        assert_equal(a, expected(x))
        assert_equal(b, a)


def test_tensors_below_the_threshold_stay_inline(tee: TeeProcess, client: TeeClient, mixed: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sent = Sent(monkeypatch)
    h = client.load_model(mixed)
    x = feeds(rows=1, cols=THRESHOLD // 8 - 8)  # the largest input (int64) is 64 bytes short of the threshold
    assert max(v.nbytes for v in x.values()) == THRESHOLD - 64
    assert_equal(client.infer(h, x), expected(x))
    assert sent.last_infer() == {"f": Tensor, "u": Tensor, "i": Tensor, "s": Tensor}
    assert tee_holds_regions(tee.pid) == 0  # no region attached for small calls
    y = feeds(rows=1, cols=THRESHOLD // 8)  # int64 exactly at the threshold: the region; the others inline
    assert_equal(client.infer(h, y), expected(y))
    assert sent.last_infer() == {"f": Tensor, "u": Tensor, "i": ShmTensor, "s": Tensor}
    assert_equal(client.infer(h, x), expected(x))  # small calls on a connection with a region: inline
    assert sent.last_infer() == {"f": Tensor, "u": Tensor, "i": Tensor, "s": Tensor}


def test_string_tensors_stay_inline_at_any_size(client: TeeClient, mixed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = Sent(monkeypatch)
    h = client.load_model(mixed)
    x = feeds(rows=300, cols=1000, text="w" * 2000)  # 600 KB of strings, 2.4 MB of int64
    assert_equal(client.infer(h, x), expected(x))
    assert sent.last_infer() == {"f": ShmTensor, "u": ShmTensor, "i": ShmTensor, "s": Tensor}
    with pytest.raises(EdbError) as err:  # a string tensor can never be a region tensor
        frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, params=[ShmTensor("s", 8, (1,), 0, 8)]))
    assert err.value.code == "TEE_DTYPE_UNSUPPORTED"


# ------------------------------------------------------------------------------------ hostile


def runner(device: Device) -> tuple[TeeContext, TeeSession, int]:
    ctx = TeeContext(device.socket)
    session = ctx.open_session(RUNNER_TA)
    loaded = session.invoke(RunnerCmd.LOAD_MODEL, [Text("mixed"), Value(LOAD_PREPACK)])
    return ctx, session, json.loads(bytes(loaded[0].data))["handle"]  # type: ignore[union-attr]


def attach(session: TeeSession, fd: int, threshold: int = THRESHOLD) -> list[Any]:
    return session.invoke(RunnerCmd.ATTACH_REGION, [Fd(0), Value(threshold)], [fd])


def memfd(size: int, seals: int) -> int:
    fd = os.memfd_create("hostile", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def still_serving(client: TeeClient, mixed: str) -> None:
    h = client.load_model(mixed)
    x = feeds(rows=1, cols=THRESHOLD)
    assert_equal(client.infer(h, x), expected(x))


def test_hostile_region_descriptors_are_refused(tee: TeeProcess, client: TeeClient, mixed: str, device: Device,
                                                tmp_path: Path) -> None:
    still_serving(client, mixed)
    plain = tmp_path / "plain"
    plain.write_bytes(bytes(1 << 20))
    readonly_source = memfd(1 << 20, fcntl.F_SEAL_SHRINK)
    pipe_r, pipe_w = os.pipe()
    os.close(pipe_w)
    cases = {
        "regular file": (os.open(plain, os.O_RDWR | os.O_CLOEXEC), "TEE_SHM_INVALID"),
        "pipe": (pipe_r, "TEE_SHM_INVALID"),
        "memfd without seals": (memfd(1 << 20, 0), "TEE_SHM_INVALID"),
        "memfd sealed against growing only": (memfd(1 << 20, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL), "TEE_SHM_INVALID"),
        "memfd read-only": (os.open(f"/proc/self/fd/{readonly_source}", os.O_RDONLY | os.O_CLOEXEC), "TEE_SHM_INVALID"),
        "memfd write-sealed": (memfd(1 << 20, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE), "TEE_SHM_INVALID"),
        "empty memfd": (memfd(0, fcntl.F_SEAL_SHRINK), "TEE_SHM_INVALID"),
        "memfd above the limit": (memfd(MAX_REGION_BYTES + 4096, fcntl.F_SEAL_SHRINK), "TEE_SHM_TOO_LARGE"),
    }
    ctx, session, _ = runner(device)
    for what, (fd, code) in cases.items():
        with pytest.raises(EdbError) as err:
            attach(session, fd)
        assert err.value.code == code, what
        os.close(fd)
        assert tee_holds_regions(tee.pid) <= 1, what  # only the serving client's region is held
    os.close(readonly_source)
    good, fd = create_region(1 << 20)
    with pytest.raises(EdbError) as err:  # a zero threshold is refused (parameters checked first)
        attach(session, fd, threshold=0)
    assert err.value.code == "TEE_BAD_PARAMETERS"
    assert attach(session, fd)[0] == Value(1 << 20)  # the same connection still attaches a good region
    os.close(fd)
    good.close()
    ctx.close()
    still_serving(client, mixed)
    big = TeeClient(device.socket, shm_bytes=MAX_REGION_BYTES + 4096)  # configured above the TEE's limit
    with pytest.raises(EdbError) as err:
        big.infer(big.load_model(mixed), feeds(rows=1, cols=THRESHOLD))
    assert err.value.code == "TEE_SHM_TOO_LARGE"
    small = feeds(rows=1, cols=64)
    assert_equal(big.infer(big.load_model(mixed), small), expected(small))  # its small calls still served
    big.close()
    still_serving(client, mixed)


def test_hostile_region_tensors_are_refused_and_the_connection_kept(tee: TeeProcess, client: TeeClient, mixed: str,
                                                                   device: Device) -> None:
    ctx, session, handle = runner(device)
    size = 1 << 20
    x = feeds(rows=1, cols=1024)

    def infer(*params: Any) -> list[Any]:
        inputs = {"u": Tensor("u", x["u"]), "i": Tensor("i", x["i"]), "s": Tensor("s", x["s"])}
        for p in params:
            inputs[p.name] = p
        return session.invoke(RunnerCmd.INFER, [Value(handle), *inputs.values()])

    f = ShmTensor("f", 1, (1, 1024), 0, 4096)
    with pytest.raises(EdbError) as err:  # no region on this connection
        infer(f)
    assert err.value.code == "TEE_SHM_NOT_ATTACHED"
    region, fd = create_region(size)
    attach(session, fd)
    os.close(fd)
    region.put("f", x["f"], 0)
    out = {p.name: p for p in infer(f)}
    np.testing.assert_array_equal(out["f_out"].array, np.maximum(x["f"], 0))  # inline: below the threshold
    for bad in (ShmTensor("f", 1, (1, 1024), size - 2048, 4096),  # runs past the end
                ShmTensor("f", 1, (1, 1024), size, 4096),  # starts at the end
                ShmTensor("f", 1, (1, 1024), (1 << 64) - 64, 4096),  # wraps in 64 bits
                ShmTensor("f", 1, (1, 1024), 4, 4096),  # not 64-byte aligned
                ShmTensor("f", 1, (1 << 20, 1024), 0, 4 << 30)):  # a 4 GiB view of a 1 MiB region
        with pytest.raises(EdbError) as err:
            infer(bad)
        assert err.value.code == "TEE_SHM_BOUNDS", bad
    with pytest.raises(EdbError) as err:  # a region tensor where a command takes something else
        session.invoke(RunnerCmd.UNLOAD, [f])
    assert err.value.code == "TEE_BAD_PARAMETERS"
    out = {p.name: p for p in infer(f)}  # the connection still serves
    np.testing.assert_array_equal(out["f_out"].array, np.maximum(x["f"], 0))
    still_serving(client, mixed)
    # headers the decoder refuses: the service answers with the code and closes that connection only
    for params, code in (([Value(handle), ShmTensor("s", 1, (1,), 0, 4)], None),  # see below: patched dtype
                         ([Value(handle), ShmTensor("f", 1, (2, 1024), 0, 4096)], "TEE_PROTOCOL")):
        body = bytearray(frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, 9, session.id, RunnerCmd.INFER,
                                             params=params), Limits())[4:])
        if code is None:  # dtype 8 (string) in a region tensor header
            body[struct.calcsize("<BBHIIII") + 17 + 1] = 8
            code = "TEE_DTYPE_UNSUPPORTED"
        raw = TeeContext(device.socket)
        raw_session = raw.open_session(RUNNER_TA)
        body[8:12] = struct.pack("<I", raw_session.id)
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        sock.settimeout(10)
        sock.sendall(struct.pack("<I", len(body)) + bytes(body))
        reply = decode(recv_reply(sock, Limits(), 256))
        assert reply.status == 1 and reply.params[0] == Text(code)
        assert sock.recv(1) == b""
        sock.close()
        raw.close()
    out = {p.name: p for p in infer(f)}
    np.testing.assert_array_equal(out["f_out"].array, np.maximum(x["f"], 0))
    ctx.close()
    region.close()
    still_serving(client, mixed)


def test_the_region_cannot_shrink_and_is_unmapped_when_its_client_goes(tee: TeeProcess, client: TeeClient,
                                                                      mixed: str, device: Device) -> None:
    region, fd = create_region(1 << 20)
    with pytest.raises(PermissionError):  # F_SEAL_SHRINK: what keeps the TEE's mapping from faulting
        os.ftruncate(fd, 4096)
    with pytest.raises(PermissionError):  # nor can the seals be changed
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
    ctx, session, _ = runner(device)
    attach(session, fd)
    os.close(fd)
    assert tee_holds_regions(tee.pid) == 1
    ctx.close()  # the client goes: the TEE closes its region
    wait_until(lambda: tee_holds_regions(tee.pid) == 0, "the TEE closes a closed connection's region")
    region.close()
    still_serving(client, mixed)  # attaches a region of its own
    assert tee_holds_regions(tee.pid) == 1
    assert tee_maps_regions(tee.pid) == 0
    client.close()
    wait_until(lambda: tee_holds_regions(tee.pid) == 0, "the TEE closes the region of a closed client")


# ------------------------------------------------------------------------------- pure checks


def test_region_and_range_checks() -> None:
    ok: dict[str, Any] = {"is_memfd": True, "is_regular": True, "on_tmpfs": True, "read_write": True, "seals": 0x2,
                          "size": 4096}
    check_region(**ok)
    for change, code in (({"is_memfd": False}, "TEE_SHM_INVALID"), ({"is_regular": False}, "TEE_SHM_INVALID"),
                         ({"seals": None}, "TEE_SHM_INVALID"), ({"seals": 0x1 | 0x4}, "TEE_SHM_INVALID"),
                         ({"read_write": False}, "TEE_SHM_INVALID"), ({"size": 0}, "TEE_SHM_INVALID"),
                         ({"on_tmpfs": False}, "TEE_SHM_INVALID"), ({"seals": 0x2 | 0x8}, "TEE_SHM_INVALID"),
                         ({"seals": 0x2 | 0x10}, "TEE_SHM_INVALID"),  # write-sealed: the TEE writes outputs
                         ({"size": MAX_REGION_BYTES + 1}, "TEE_SHM_TOO_LARGE")):
        with pytest.raises(EdbError) as err:
            check_region(**{**ok, **change})
        assert err.value.code == code, change
    check_region(**{**ok, "size": MAX_REGION_BYTES})
    check_range(0, 4096, 4096)
    check_range(4032, 64, 4096)
    for offset, nbytes in ((0, 4097), (4096, 1), (32, 64), (0, 0), (1 << 64, 64)):
        with pytest.raises(EdbError) as err:
            check_range(offset, nbytes, 4096)
        assert err.value.code == "TEE_SHM_BOUNDS"


def test_region_tensor_header_round_trips_and_is_bounded() -> None:
    p = ShmTensor("input", 7, (2, 3), 128, 48)
    msg = Message(MsgType.REQUEST, Op.INVOKE, 5, 1, RunnerCmd.INFER, params=[Value(1), p])
    assert decode(bytearray(frame_bytes(msg)[4:])).params == [Value(1), p]
    body = bytearray(b"".join(bytes(x) for x in encode(msg))[4:])
    for cut in range(1, len(body) - 24):  # every truncation is refused, never read past the end
        with pytest.raises(EdbError) as err:
            decode(body[:-cut])
        assert err.value.code == "TEE_PROTOCOL"
    with pytest.raises(EdbError) as err:  # length that does not match dtype and shape
        decode(bytearray(frame_bytes(Message(MsgType.REQUEST, Op.INVOKE,
                                             params=[ShmTensor("x", 1, (2,), 0, 12)]))[4:]))
    assert err.value.code == "TEE_PROTOCOL"
