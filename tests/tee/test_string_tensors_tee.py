"""String tensors through the real TEE service: a scikit-learn classifier trained on string labels
(skl2onnx) answers its labels; string inputs and outputs cross both ways; ZipMap outputs are left
out with a logged reason; out-of-bounds strings are refused with their code and nothing is lost."""

from __future__ import annotations

import json
import os
import socket
import struct

import numpy as np
import pytest
from onnx import TensorProto, helper
from tee_helpers import Device, Publisher, TeeProcess, install

from edb.errors import EdbError
from edb.tee import RUNNER_TA, TeeClient, TeeContext
from edb.tee.commands import LOAD_PREPACK, RunnerCmd
from edb.tee.protocol import Limits, Message, MsgType, Op, Tensor, Text, Value, decode, frame_bytes
from edb.tee.transport import recv_reply

pytestmark = pytest.mark.timeout(120)

CLASSES = np.array(["cat", "dög", "éel 🐍", ""], dtype=object)  # non-ASCII and an empty label too


def classifier(zipmap: bool) -> tuple[bytes, object, np.ndarray]:
    """A logistic regression on string labels, converted with skl2onnx (``zipmap`` as asked)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 6)).astype(np.float32)
    y = CLASSES[np.argmax(x[:, :4], axis=1)]
    clf = LogisticRegression(max_iter=500).fit(x, y)
    return to_onnx(clf, x[:1], options={"zipmap": zipmap}).SerializeToString(), clf, x


def string_model() -> bytes:
    """``text`` (string) -> ``echo`` (Identity, string) and ``code`` (LabelEncoder, int64)."""
    nodes = [helper.make_node("Identity", ["text"], ["echo"]),
             helper.make_node("LabelEncoder", ["text"], ["code"], domain="ai.onnx.ml",
                              keys_strings=["cat", "dög", "🐍"], values_int64s=[1, 2, 3], default_int64=-1)]
    graph = helper.make_graph(
        nodes, "strings", [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, [None]),
         helper.make_tensor_value_info("code", TensorProto.INT64, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 9
    return model.SerializeToString()


def test_string_label_classifier_answers_its_labels(client: TeeClient, make_package, publisher: Publisher,
                                                    device: Device) -> None:
    model, clf, x = classifier(zipmap=False)
    install(client, make_package(model, package_id="animals"), publisher, device, name="animals")
    h = client.load_model("animals")
    specs = {o.name: o.dtype for o in h.outputs}
    assert specs == {"label": "string", "probabilities": "float32"}
    for rows in (1, 7, 1, 64, 7):  # repeated shapes: served by the connection's fast lane after the first
        sample = x[:rows]
        out = client.infer(h, {"X": sample})
        assert out["label"].dtype == object and out["label"].shape == (rows,)
        assert out["label"].tolist() == clf.predict(sample).tolist()  # type: ignore[attr-defined]
        np.testing.assert_allclose(out["probabilities"], clf.predict_proba(sample), atol=1e-5)  # type: ignore[attr-defined]
    assert set(client.infer(h, {"X": x})["label"].tolist()) == set(CLASSES.tolist())  # every label, "" included
    with pytest.raises(EdbError) as err:  # strings where the model takes numbers
        client.infer(h, {"X": np.full((1, 6), "1.0")})
    assert err.value.code == "TEE_INPUT_INVALID"
    batch = [{"X": x[:2]}, {"X": x[2:5]}, {"X": x[5:6]}]
    split = client.infer_many(h, batch)
    assert [s["label"].tolist() for s in split] == [clf.predict(b["X"]).tolist() for b in batch]  # type: ignore[attr-defined]
    client.unload(h)


def test_zipmap_output_is_left_out_with_a_logged_reason(tee: TeeProcess, client: TeeClient, make_package,
                                                        publisher: Publisher, device: Device) -> None:
    model, clf, x = classifier(zipmap=True)
    install(client, make_package(model, package_id="zipped"), publisher, device, name="zipped")
    h = client.load_model("zipped")
    assert {o.name: o.dtype for o in h.outputs} == {"output_label": "string", "output_probability": "unknown"}
    out = client.infer(h, {"X": x[:5]})
    assert list(out) == ["output_label"]
    assert out["output_label"].tolist() == clf.predict(x[:5]).tolist()  # type: ignore[attr-defined]
    log = tee.log.read_text()
    assert "output 'output_probability' of type seq(map(string,tensor(float))) cannot cross the TEE boundary" in log
    assert "zipmap" in log


def test_model_without_any_crossing_output_is_refused_at_install(client: TeeClient, make_package,
                                                                 publisher: Publisher, device: Device) -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["seq"])], "seq-only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    with pytest.raises(EdbError) as err:
        install(client, make_package(model.SerializeToString(), package_id="seqs"), publisher, device, name="seqs")
    assert err.value.code == "TEE_OUTPUT_UNSUPPORTED"
    assert client.list_installed() == []  # nothing installed, no floor raised for it
    with pytest.raises(EdbError) as err:
        client.load_model("seqs")
    assert err.value.code == "TEE_NOT_INSTALLED"


def test_string_inputs_and_outputs_cross_both_ways(client: TeeClient, make_package, publisher: Publisher,
                                                   device: Device) -> None:
    install(client, make_package(string_model(), package_id="strings"), publisher, device, name="strings")
    h = client.load_model("strings")
    assert [(i.name, i.dtype) for i in h.inputs] == [("text", "string")]
    texts = ["cat", "dög", "🐍", "", "a\0b", "日本語" * 100, "x" * 65_536]
    for feed in (np.array(texts, dtype=object), np.array(texts)):  # object arrays and numpy str arrays
        out = client.infer(h, {"text": feed})
        assert out["echo"].tolist() == texts
        assert out["code"].tolist() == [1, 2, 3, -1, -1, -1, -1]
    assert client.infer(h, {"text": np.array([], dtype=object)})["echo"].shape == (0,)
    # refused by the client before anything is sent: the pooled connection stays and serves the next call
    for bad, code in ((["x" * 65_537], "TEE_STRING_TOO_LONG"), (["\udc80"], "TEE_STRING_INVALID"),
                      (np.array([b"raw"]), "TEE_DTYPE_UNSUPPORTED"), ([b"raw", "ok"], "TEE_DTYPE_UNSUPPORTED")):
        arr = bad if isinstance(bad, np.ndarray) else np.array(bad, dtype=object)
        with pytest.raises(EdbError) as err:
            client.infer(h, {"text": arr})
        assert err.value.code == code
    assert client.infer(h, {"text": np.array(["cat"])})["code"].tolist() == [1]
    with pytest.raises(EdbError) as err:  # numbers where the model takes strings: ONNX Runtime refuses them
        client.infer(h, {"text": np.ones(3, np.float32)})
    assert err.value.code == "TEE_INPUT_INVALID"


def _reply_error(sock: socket.socket) -> str:
    msg = decode(recv_reply(sock, Limits(), 256))
    assert msg.status == 1 and isinstance(msg.params[0], Text)
    return msg.params[0].text


def test_hostile_string_frames_are_refused_by_the_service(tee: TeeProcess, client: TeeClient, make_package,
                                                          publisher: Publisher, device: Device) -> None:
    install(client, make_package(string_model(), package_id="strings"), publisher, device, name="strings")
    serving = client.load_model("strings")
    loose = Limits(max_strings=1 << 30, max_string_bytes=1 << 30, max_string_total=1 << 30)
    many = np.array(["a"] * ((1 << 20) + 1), dtype=object)
    cases = [
        (many, "TEE_STRING_TOO_MANY"),
        (np.array(["x" * (64 * 1024 + 1)], dtype=object), "TEE_STRING_TOO_LONG"),
        (np.array(["y" * 60_000] * 300, dtype=object), "TEE_STRING_TOO_LARGE"),  # 18 MB of strings
        (np.array(["\udc80"], dtype=object), "TEE_STRING_INVALID"),  # encoded below as surrogateescape bytes
    ]
    for arr, code in cases:
        ctx = TeeContext(device.socket)
        session = ctx.open_session(RUNNER_TA)
        loaded = session.invoke(RunnerCmd.LOAD_MODEL, [Text("strings"), Value(LOAD_PREPACK)])
        handle = json.loads(bytes(loaded[0].data))["handle"]  # type: ignore[union-attr]
        if code == "TEE_STRING_INVALID":  # what a hostile client sends: a length table over bytes that are not UTF-8
            body = bytearray(frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, 7, session.id, RunnerCmd.INFER,
                                                 params=[Value(handle), Tensor("text", np.array(["ok"]))]))[4:])
            body[-2:] = b"\xc3\x28"
            frame = struct.pack("<I", len(body)) + bytes(body)
        else:  # an encoder with looser limits than the service's
            frame = frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, 7, session.id, RunnerCmd.INFER,
                                        params=[Value(handle), Tensor("text", arr)]), loose)
        sock = socket.socket(fileno=os.dup(ctx.fileno()))
        sock.settimeout(10)
        sock.sendall(frame)
        assert _reply_error(sock) == code
        assert sock.recv(1) == b""  # the service closed the connection
        sock.close()
        ctx.close()
    # nothing lost: the service still serves, the handle loaded before is intact
    assert client.infer(serving, {"text": np.array(["dög"])})["code"].tolist() == [2]
    assert tee.proc is not None and tee.proc.poll() is None
