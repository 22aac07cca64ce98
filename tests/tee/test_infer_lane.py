"""The per-call path through the real TEE service: repeated infer requests (served by the
connection's fast lane once learnt) give exactly the general path's answers and refusals."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
from tee_helpers import Device, Publisher, TeeProcess, install, mlp_model, reference

from edb.errors import EdbError
from edb.tee import DEVICE_TA, RUNNER_TA, TeeClient, TeeContext
from edb.tee.commands import LOAD_PREPACK, DeviceCmd, RunnerCmd
from edb.tee.protocol import (
    LayoutCache,
    Limits,
    Message,
    MsgType,
    Op,
    Tensor,
    Text,
    Value,
    decode,
    encode_tensors,
    frame_bytes,
    value_param,
)
from edb.tee.transport import recv_reply
from edb_tee.lane import InferLane


def test_repeated_calls_are_exact_across_data_shapes_and_handles(client: TeeClient, make_package,
                                                                 publisher: Publisher, device: Device) -> None:
    pkg = make_package()
    install(client, pkg, publisher, device)
    a = client.load_model("mlp", prepack=True)
    b = client.load_model("mlp", prepack=False)
    rng = np.random.default_rng(1)
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    for i in range(60):
        rows = (1, 1, 3, 1, 7)[i % 5]  # layouts change and come back: the lane is relearnt
        x = rng.standard_normal((rows, 64), dtype=np.float32)
        h = a if i % 7 else b  # and so does the handle
        y = client.infer(h, {"input": x})["output"]
        np.testing.assert_allclose(y, reference(pkg.model, x), rtol=1e-5, atol=1e-6)
        assert y.flags.writeable
        kept.append((x, y.copy()))
        if i % 10 == 0:
            y *= 0  # results are the caller's: writing them changes nothing in later calls
    for x, y in kept[-5:]:
        np.testing.assert_allclose(reference(pkg.model, x), y, rtol=1e-5, atol=1e-6)
    first = client.infer(a, {"input": kept[0][0]})["output"]
    second = client.infer(a, {"input": kept[1][0]})["output"]
    np.testing.assert_allclose(first, kept[0][1], rtol=1e-5, atol=1e-5)  # not overwritten by the next reply
    assert not np.shares_memory(first, second)
    client.unload(a)
    with pytest.raises(EdbError) as err:  # the same request shape after unload: refused, not served
        client.infer(a, {"input": kept[0][0]})
    assert err.value.code == "TEE_UNKNOWN_HANDLE"
    with pytest.raises(EdbError) as err:
        client.infer(b, {"inpux": kept[0][0]})
    assert err.value.code == "TEE_INPUT_INVALID"
    client.unload(b)


class Wire:
    """One raw connection: a runner session, a loaded handle, pre-encoded infer frames."""

    def __init__(self, device: Device) -> None:
        self.ctx = TeeContext(device.socket)
        self.session = self.ctx.open_session(RUNNER_TA)
        out = self.session.invoke(RunnerCmd.LOAD_MODEL, [Text("mlp"), Value(LOAD_PREPACK)])
        self.handle = json.loads(bytes(out[0].data))["handle"]  # type: ignore[union-attr]
        self.sock = socket.socket(fileno=os.dup(self.ctx.fileno()))
        self.sock.setblocking(True)
        self.sock.settimeout(60)
        self.replies = LayoutCache()
        self.rid = 1000

    def frame(self, x: np.ndarray, name: str = "input", session: int | None = None) -> bytearray:
        self.rid += 1
        return bytearray(b"".join(bytes(p) for p in encode_tensors(
            MsgType.REQUEST, Op.INVOKE, self.rid, self.session.id if session is None else session, RunnerCmd.INFER,
            value_param(self.handle), 1, [(name, x)])))

    def call(self, frame: bytes | bytearray) -> Message:
        self.sock.sendall(frame)
        return self.replies.decode(recv_reply(self.sock, Limits(), 4096))

    def close(self) -> None:
        self.sock.close()
        self.ctx.close()


def code(msg: Message) -> str:
    assert msg.status == 1
    return msg.params[0].text  # type: ignore[union-attr]


def test_what_the_general_path_refuses_the_lane_refuses(tee: TeeProcess, client: TeeClient, make_package,
                                                        publisher: Publisher, device: Device) -> None:
    install(client, make_package(model=mlp_model()), publisher, device)
    x = np.ones((1, 64), np.float32)

    w = Wire(device)
    for _ in range(3):  # learnt, then served by the lane
        assert w.call(w.frame(x)).status == 0
    bad = w.frame(x)
    dims_at = bad.index(b"input") + len(b"input")  # first dim (u64) right after the name
    bad[dims_at:dims_at + 8] = (2).to_bytes(8, "little")  # same length, shape no longer matches the data
    assert code(w.call(bad)) == "TEE_PROTOCOL"
    w.close()

    w = Wire(device)
    w.call(w.frame(x))
    w.call(w.frame(x))
    assert code(w.call(w.frame(x, name="inpux"))) == "TEE_INPUT_INVALID"  # same length, another input name
    w.call(w.frame(x))
    assert w.call(w.frame(x)).status == 0
    w.session.invoke(RunnerCmd.UNLOAD, [Value(w.handle)])
    assert code(w.call(w.frame(x))) == "TEE_UNKNOWN_HANDLE"  # the learnt shape, after unload
    w.close()

    w = Wire(device)
    w.call(w.frame(x))
    w.call(w.frame(x))
    closed_session = w.session.id
    w.session.close()
    assert code(w.call(w.frame(x, session=closed_session))) == "TEE_UNKNOWN_SESSION"
    w.close()

    # two requests sent before the first is answered: refused, the connection closed
    w = Wire(device)
    ping = frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, 5, w.ctx.open_session(DEVICE_TA).id,
                               DeviceCmd.DEVICE_INFO))
    w.sock.sendall(ping + ping)
    assert code(w.replies.decode(recv_reply(w.sock, Limits(), 4096))) == "TEE_PROTOCOL"
    with pytest.raises((EdbError, OSError)):
        recv_reply(w.sock, Limits(), 4096)
    w.close()

    assert client.device_info().device_id == device.layout.root.name  # still serving


class StubModels:
    """Pure stand-in for the model manager (the lane's only collaborator)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, list[str]]] = []
        self.error: Exception | None = None

    def infer(self, handle: int, owner: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append((handle, owner, list(feeds)))
        if self.error is not None:
            raise self.error
        return {"output": feeds["input"] * 2}


def lane_for(msg: Message, models: StubModels, ta: str = "runner") -> tuple[InferLane | None, LayoutCache]:
    cache = LayoutCache()
    decoded = cache.decode(bytearray(frame_bytes(msg)[4:]))
    return InferLane.learn(cache.last, decoded, ta, models, 4242, Limits()), cache  # type: ignore[arg-type]


def infer_msg(x: np.ndarray, rid: int = 1, params: list | None = None) -> Message:  # type: ignore[type-arg]
    return Message(MsgType.REQUEST, Op.INVOKE, rid, 3, RunnerCmd.INFER, 0,
                   params if params is not None else [Value(77), Tensor("input", x)])


def test_lane_serves_only_exact_shapes_and_keeps_the_model_managers_checks() -> None:
    models = StubModels()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    lane, _ = lane_for(infer_msg(x), models)
    assert lane is not None
    reply = lane.serve(memoryview(bytearray(frame_bytes(infer_msg(x + 1, rid=9))[4:])))
    assert reply is not None
    out = decode(bytearray(b"".join(bytes(p) for p in reply)[4:]))
    assert (out.type, out.op, out.request_id, out.session, out.command, out.status) == (
        MsgType.RESPONSE, Op.INVOKE, 9, 3, RunnerCmd.INFER, 0)
    np.testing.assert_array_equal(out.params[0].array, (x + 1) * 2)  # type: ignore[union-attr]
    assert models.calls == [(77, 4242, ["input"])]  # handle and owner checked by the manager on every call
    for other in (infer_msg(np.ones((3, 4), np.float32)), infer_msg(x.astype(np.float64)),
                  infer_msg(x, params=[Value(78), Tensor("input", x)])):
        assert lane.serve(memoryview(bytearray(frame_bytes(other)[4:]))) is None  # the general path's
    models.error = EdbError("gone", code="TEE_UNKNOWN_HANDLE")
    reply = lane.serve(memoryview(bytearray(frame_bytes(infer_msg(x, rid=10))[4:])))
    out = decode(bytearray(b"".join(bytes(p) for p in reply or [])[4:]))
    assert out.status == 1 and out.request_id == 10 and out.params[0] == Text("TEE_UNKNOWN_HANDLE")
    models.error = RuntimeError("bug")
    reply = lane.serve(memoryview(bytearray(frame_bytes(infer_msg(x, rid=11))[4:])))
    out = decode(bytearray(b"".join(bytes(p) for p in reply or [])[4:]))
    assert out.params[0] == Text("TEE_INTERNAL") and "bug" not in out.params[1].text  # type: ignore[union-attr]


def test_only_runner_infer_requests_get_a_lane() -> None:
    x = np.ones((1, 4), np.float32)
    assert lane_for(infer_msg(x), StubModels(), ta="device")[0] is None
    assert lane_for(Message(MsgType.REQUEST, Op.INVOKE, 1, 3, RunnerCmd.UNLOAD, 0, [Value(1)]), StubModels())[0] is None
    assert lane_for(infer_msg(x, params=[Tensor("input", x)]), StubModels())[0] is None  # no handle first
    assert lane_for(infer_msg(x, params=[Value(1), Tensor("a", x), Tensor("a", x)]), StubModels())[0] is None
    assert lane_for(infer_msg(x, params=[Value(1), Text("a")]), StubModels())[0] is None
