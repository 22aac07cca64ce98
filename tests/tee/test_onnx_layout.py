"""The aligned ONNX layout (edb.onnx_layout) and zero-copy session creation inside the TEE."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tee_helpers import mlp_model, reference

from edb import onnx_layout as L
from edb.errors import EdbError
from edb_tee.hardening import SecureBuffer
from edb_tee.models import build_session


def load(layout: bytes, tmp_path: Path, *, prepack: bool = False):  # type: ignore[no-untyped-def]
    buf = SecureBuffer(len(layout))
    buf.view()[:] = layout
    session, values = build_session(buf, prepack=prepack, empty_dir=tmp_path)
    return buf, session, values


def test_layout_structure_and_alignment() -> None:
    model = mlp_model(dim=64, layers=3)
    out = L.convert(model)
    parsed = L.parse(out)
    magic, version, align, g_off, _g, d_off, d_size, count, _r = L.HEADER.unpack_from(out)
    assert (magic, version, align, g_off, count) == (b"EDBONNXL", 1, 64, 64, 3)
    assert d_off % 4096 == 0 and d_off + d_size == len(out)
    originals = {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(model).graph.initializer}
    for t in parsed.tensors:
        assert t.offset % 64 == 0
        np.testing.assert_array_equal(np.frombuffer(out, np.float32, t.length // 4, t.offset).reshape(t.dims),
                                      originals[t.name])
    # the graph part is a valid ONNX model whose big initializers point at "."
    g = onnx.load_from_string(bytes(parsed.graph))
    assert all({e.key: e.value for e in t.external_data}["location"] == "." for t in g.graph.initializer)


def test_convert_file_matches_convert(tmp_path: Path) -> None:
    model = mlp_model()
    src = tmp_path / "m.onnx"
    src.write_bytes(model)
    L.convert_file(src, tmp_path / "m.edb")
    assert (tmp_path / "m.edb").read_bytes() == L.convert(model)


def test_session_uses_the_tee_buffer_in_place(tmp_path: Path) -> None:
    model = mlp_model()
    buf, session, _ = load(L.convert(model), tmp_path)
    x = np.ones((2, 64), np.float32)
    np.testing.assert_allclose(session.run(None, {"input": x})[0], reference(model, x), rtol=1e-5)
    buf.wipe()  # overwrite our buffer: ONNX Runtime computes on it, so the output changes
    assert not np.any(session.run(None, {"input": x})[0])


def test_prepacked_session_keeps_its_own_copies(tmp_path: Path) -> None:
    model = mlp_model()
    buf, session, _ = load(L.convert(model), tmp_path, prepack=True)
    x = np.ones((2, 64), np.float32)
    np.testing.assert_allclose(session.run(None, {"input": x})[0], reference(model, x), rtol=1e-5)
    buf.wipe()  # MatMul now computes on ONNX Runtime's prepacked copies (the memory cost of prepack=True)
    np.testing.assert_allclose(session.run(None, {"input": x})[0], reference(model, x), rtol=1e-5)


def test_models_with_shape_tensors_small_initializers_and_sklearn(tmp_path: Path) -> None:
    # Reshape needs its int64 shape at optimisation time: small initializers stay inline
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 512), dtype=np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 4, 128], np.int64), "shape")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Reshape", ["m", "shape"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    model = m.SerializeToString()
    _, session, _ = load(L.convert(model), tmp_path)
    x = np.ones((3, 8), np.float32)
    assert session.run(None, {"x": x})[0].shape == (3, 4, 128)
    # a scikit-learn classifier converted with skl2onnx, as the demo pipeline trains
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 300)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    clf = LogisticRegression(max_iter=200).fit(X, y)
    onx = to_onnx(clf, X[:1], options={"zipmap": False}).SerializeToString()
    _, session, _ = load(L.convert(onx), tmp_path)
    labels = session.run(None, {"X": X[:10]})[0]
    np.testing.assert_array_equal(labels, clf.predict(X[:10]))


def _mutated(layout: bytes, fn) -> bytes:  # type: ignore[no-untyped-def]
    b = bytearray(layout)
    fn(b)
    return bytes(b)


def test_hostile_layouts_are_refused() -> None:
    good = L.convert(mlp_model())
    graph_start = 64
    cases = {
        "magic": _mutated(good, lambda b: b.__setitem__(slice(0, 8), b"NOTALAYO")),
        "version": _mutated(good, lambda b: struct.pack_into("<I", b, 8, 2)),
        "size": good + b"\0" * 64,
        "count": _mutated(good, lambda b: struct.pack_into("<Q", b, 48, 7)),
        "data offset": _mutated(good, lambda b: struct.pack_into("<Q", b, 32, 100)),
        "location": good.replace(b"\x12\x01.", b"\x12\x01/"),
        "offset": good.replace(b"offset\x12\x010", b"offset\x12\x013"),
        "length": good.replace(b"length\x12\x0516384", b"length\x12\x0516383"),
        "graph": _mutated(good, lambda b: b.__setitem__(slice(graph_start, graph_start + 4), b"\xff\xff\xff\xff")),
    }
    for what, data in cases.items():
        assert data != good, what
        with pytest.raises(EdbError) as err:
            L.parse(data)
        assert err.value.code == "LAYOUT_INVALID", what


def test_overlapping_or_out_of_bounds_tensors_are_refused() -> None:
    good = L.convert(mlp_model(layers=2))
    # point the second tensor at the first one's data (overlap), then past the end
    overlap = good.replace(b"offset\x12\x0516384", b"offset\x12\x0500000")
    with pytest.raises(EdbError) as err:
        L.parse(overlap)
    assert err.value.code == "LAYOUT_INVALID"
    beyond = good.replace(b"offset\x12\x0516384", b"offset\x12\x0599968")
    with pytest.raises(EdbError) as err:
        L.parse(beyond)
    assert err.value.code == "LAYOUT_INVALID"


def test_converter_refuses_what_it_cannot_carry(tmp_path: Path) -> None:
    model = onnx.load_from_string(mlp_model())
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    with pytest.raises(EdbError) as err:
        L.convert((tmp_path / "ext.onnx").read_bytes())
    assert err.value.code == "LAYOUT_UNSUPPORTED"
    with pytest.raises(EdbError) as err:
        L.convert(L.convert(mlp_model()))
    assert err.value.code == "LAYOUT_INVALID"
    with pytest.raises(EdbError) as err:
        L.convert(b"\x0a\xff\xff")
    assert err.value.code == "LAYOUT_INVALID"


def test_unload_overwrites_and_unmaps_the_buffer(tmp_path: Path) -> None:
    from edb_tee.models import ModelManager

    manager = ModelManager(tmp_path)
    layout = L.convert(mlp_model())

    def unseal() -> SecureBuffer:
        buf = SecureBuffer(len(layout))
        buf.view()[:] = layout
        return buf

    a = manager.load("m", "1", "m", owner=1, prepack=False, unseal=unseal)
    b = manager.load("m", "1", "m", owner=1, prepack=False, unseal=unseal)  # shares the session
    [model] = manager._models.values()
    view = model.buffer.mm  # keep a handle on the mapping to look at it afterwards
    x = np.ones((1, 64), np.float32)
    assert manager.infer(a.handle, 1, {"input": x})["output"].shape == (1, 64)
    with pytest.raises(EdbError) as err:
        manager.infer(a.handle, 2, {"input": x})  # another process's handle
    assert err.value.code == "TEE_UNKNOWN_HANDLE"
    manager.unload(a.handle, 1)
    assert not view.closed  # still used by handle b
    manager.unload(b.handle, 1)
    assert view.closed and model.active == -1
    assert manager.status()["loaded"] == []


def test_prepack_policy() -> None:
    from edb_tee.models import choose_prepack

    assert choose_prepack(None, 10, 64) and not choose_prepack(None, 65, 64)
    assert not choose_prepack(None, None, 64)  # size unknown (installed by an older version): in place
    assert choose_prepack(True, 10**9, 64) and not choose_prepack(False, 1, 64)
