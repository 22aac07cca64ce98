"""The TEE's two ways to create a session, one at a time (``create_session(modes=...)``), the error a
refused model carries, and the release of a buffer whose weights ONNX Runtime copied. In process,
no TEE service: the loader's own functions."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
from corpus import conv_nchwc, mlp_at_opset, unknown_operator

from edb import onnx_layout
from edb.errors import TeeError
from edb.ort import onnxruntime as ort
from edb_tee.hardening import SecureBuffer
from edb_tee.models import COPIED, IN_PLACE, create_session, model_cause, session_options


def layout_buffer(model: bytes) -> SecureBuffer:
    layout = onnx_layout.convert(model)
    buf = SecureBuffer(len(layout))
    buf.mm[:len(layout)] = layout
    return buf


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    d = tmp_path / "ort-empty"
    d.mkdir()
    return d


def test_nchwc_conv_is_refused_in_place_with_the_file_cause_and_loads_copied(empty: Path) -> None:
    buf = layout_buffer(conv_nchwc())
    try:
        with pytest.raises(TeeError) as refused:
            create_session(buf, prepack=False, empty_dir=empty, modes=(IN_PLACE,))
        assert refused.value.code == "TEE_MODEL_INVALID"
        assert "Random-access reads require a regular file" in refused.value.message  # the root cause, kept
        session, _, mode = create_session(buf, prepack=False, empty_dir=empty)
        assert mode == COPIED
        del session
    finally:
        buf.close()


def test_a_model_that_needs_no_weight_read_stays_in_place_and_computes_on_the_buffer(empty: Path) -> None:
    model = mlp_at_opset(17, 8)()
    buf = layout_buffer(model)
    try:
        session, values, mode = create_session(buf, prepack=False, empty_dir=empty)
        assert mode == IN_PLACE
        x = np.ones((2, 64), np.float32)
        before = session.run(None, {"x": x})[0]
        reference = ort.InferenceSession(model, session_options(prepack=False), providers=["CPUExecutionProvider"])
        assert np.array_equal(before, reference.run(None, {"x": x})[0])
        buf.wipe()  # in place: ONNX Runtime reads the TEE's buffer, so wiping it changes the answer
        assert not np.array_equal(session.run(None, {"x": x})[0], before)
        del session, values
    finally:
        buf.close()


def test_copied_weights_survive_the_release_of_the_tee_buffer(empty: Path) -> None:
    model = conv_nchwc()
    buf = layout_buffer(model)
    session, values, mode = create_session(buf, prepack=False, empty_dir=empty)
    assert mode == COPIED
    x = np.random.default_rng(0).standard_normal((1, 256, 64, 1)).astype(np.float32)
    before = session.run(None, {"x": x})[0]
    values.clear()
    buf.release()
    assert buf.released and not buf.locked
    assert not any(buf.mm[:4096])  # given back: reads see zeros
    assert np.array_equal(session.run(None, {"x": x})[0], before)
    del session
    buf.close()


def test_release_frees_the_pages_even_with_views_alive() -> None:
    buf = SecureBuffer(8 * mmap.PAGESIZE)
    buf.mm[:] = b"\xa5" * len(buf.mm)
    view = np.frombuffer(buf.mm, dtype=np.uint8)  # like an OrtValue's numpy array
    buf.release()
    assert not view.any()
    buf.release()  # idempotent
    del view
    buf.close()
    assert buf.mm.closed


def test_a_refused_model_names_the_exception_type_and_ort_cause(empty: Path) -> None:
    buf = layout_buffer(unknown_operator())
    try:
        with pytest.raises(TeeError) as refused:
            create_session(buf, prepack=False, empty_dir=empty)
    finally:
        buf.close()
    message = refused.value.message
    assert message.startswith("ONNX Runtime refused the model: InvalidGraph: ")
    assert message.endswith("No Op registered for NoSuchOperator with domain_version of 17")
    assert "\n" not in message
    long = model_cause(RuntimeError("head " + "x" * 5000 + " root cause"), 300)
    assert len(long) <= 300 and long.startswith("RuntimeError: head") and long.endswith("root cause")
