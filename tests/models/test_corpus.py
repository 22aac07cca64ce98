"""The model corpus end to end: each model built -> packaged (a real signed .cpk v2) -> installed in a
real TEE process (key released to its evidence) -> loaded -> run through the TEE client, and every
output compared bit for bit (values, dtype, shape) with plain ``onnxruntime.InferenceSession(path)``
in this process with the TEE's session options. Models the TEE must refuse are refused at install
with their code and ONNX Runtime's whole cause, nothing installed, and alert as ``model``.

One TEE for the module; every model is installed once (``installed``)."""

from __future__ import annotations

import datetime as dt
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from corpus import CORPUS, SERVED, CorpusModel
from tee_helpers import Device, Package, Publisher, TeeProcess, install

from edb import onnx_layout
from edb.cpk import PackageIdentity, Target, build
from edb.errors import EdbError
from edb.ort import onnxruntime as ort
from edb.schemas import AlertType, ErrorInfo, EventKind, ModuleEvent
from edb.schemas.common import MAX_ERROR_MESSAGE
from edb.tee import TeeClient
from edb_tee.hardening import SecureBuffer
from edb_tee.models import COPIED, IN_PLACE, create_session, session_options
from telemetry_reporter.alerts import classify

#: models packaged as plain ONNX (the TEE converts them at install), as `edb package build` does by
#: default; the others in the aligned layout
PLAIN = {"magika", "ocr-det", "mlp-opset9", "strings", "sequence-output"}
#: the weights of these must be read by ONNX Runtime's optimisers at session creation (x86 NCHWc
#: reordering of Conv weights, Conv+BatchNorm fusion, float16 weights cast to float32 for CPU kernels
#: and folded): the TEE hands them over to be copied; the rest load in place
NEED_COPY = {"conv-nchwc", "conv-bn-residual", "depthwise-dynamic-hw", "float16-mlp", "magika"}


def package(model: CorpusModel, data: bytes, publisher: Publisher, directory: Path) -> Package:
    layout = model.name not in PLAIN
    payload = onnx_layout.convert(data) if layout else data
    now = dt.datetime.now(dt.UTC)
    ident = PackageIdentity(
        package_id=model.name, version="1.0.0", security_version=1,
        target=Target(device_ids=("dev-1",), device_classes=()), created=now - dt.timedelta(minutes=5),
        expires=now + dt.timedelta(days=1), media_type=onnx_layout.MEDIA_TYPE if layout else "application/onnx")
    out = directory / f"{model.name}.cpk"
    result = build(io.BytesIO(payload), out, identity=ident, kek=publisher.kek, signer=publisher.signer,
                   chunk_size=1024 * 1024)
    return Package(out, result, data, payload)


@pytest.fixture(scope="module")
def installed(corpus_client: TeeClient, corpus_publisher: Publisher, corpus_device: Device,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """name -> (the model's .onnx file, the install summary or the EdbError the install raised)."""
    directory = tmp_path_factory.mktemp("corpus")
    outcome: dict[str, tuple[Path, object]] = {}
    for model in CORPUS:
        data = model.build()
        path = directory / f"{model.name}.onnx"
        path.write_bytes(data)
        pkg = package(model, data, corpus_publisher, directory)
        try:
            outcome[model.name] = (path, install(corpus_client, pkg, corpus_publisher, corpus_device, model.name))
        except EdbError as exc:
            outcome[model.name] = (path, exc)
    return outcome


def test_the_corpus_covers_what_the_issue_asks() -> None:
    assert len(SERVED) >= 12
    assert sum(m.real for m in SERVED) >= 3
    covers = " ".join(m.covers for m in CORPUS)
    for what in ("NCHWc", "depthwise", "H x W", "int64", "int32", "uint8", "bool", "float16", "string",
                 "attention", "LayerNorm", "Gather", "custom_metadata_map", "opset 9", "opset 21", "sequence"):
        assert what in covers, what


def same(tee_out: dict[str, Any], ref_names: list[str], ref: list[Any]) -> list[str]:
    """The names whose TEE output differs from plain ONNX Runtime's in value, dtype or shape."""
    assert sorted(tee_out) == sorted(ref_names)
    return [n for n, r in zip(ref_names, ref, strict=True)
            if not (isinstance(tee_out[n], np.ndarray) and tee_out[n].dtype == r.dtype
                    and tee_out[n].shape == r.shape and np.array_equal(tee_out[n], r))]


@pytest.mark.parametrize("prepack", [None, False], ids=["default", "in-place"])
@pytest.mark.parametrize("name", [m.name for m in SERVED])
def test_served_model_answers_exactly_as_plain_onnxruntime(
        name: str, prepack: bool | None, installed: dict[str, tuple[Path, object]], corpus_client: TeeClient) -> None:
    model = next(m for m in SERVED if m.name == name)
    path, summary = installed[name]
    assert not isinstance(summary, Exception), f"{name} did not install: {summary}"
    handle = corpus_client.load_model(name, prepack=prepack)
    try:
        reference = ort.InferenceSession(str(path), session_options(prepack=handle.prepacked),
                                         providers=["CPUExecutionProvider"])
        crossing = [o.name for o in reference.get_outputs() if o.type.startswith("tensor(")]
        assert [o.name for o in handle.outputs if o.dtype != "unknown"] == crossing
        for feeds in model.feeds():
            got = corpus_client.infer(handle, feeds)
            assert same(got, crossing, reference.run(crossing, feeds)) == [], name
        loaded = [m for m in corpus_client.status()["models"]["loaded"] if m["name"] == name]
        # copied weights: the TEE's own decrypted buffer was overwritten and given back before these
        # answers, so they came from ONNX Runtime's copies
        assert [(m["weights"], m["released"]) for m in loaded] == \
            [(COPIED, True) if name in NEED_COPY else (IN_PLACE, False)]
    finally:
        corpus_client.unload(handle)


def test_a_zipmap_output_is_listed_but_not_returned(corpus_client: TeeClient,
                                                    installed: dict[str, tuple[Path, object]]) -> None:
    handle = corpus_client.load_model("sklearn-forest-zipmap")
    try:
        kinds = {o.name: o.dtype for o in handle.outputs}
        assert kinds == {"output_label": "int64", "output_probability": "unknown"}
        assert set(corpus_client.infer(handle, SERVED_BY_NAME["sklearn-forest-zipmap"].feeds()[0])) == {"output_label"}
    finally:
        corpus_client.unload(handle)


SERVED_BY_NAME = {m.name: m for m in SERVED}


@pytest.mark.parametrize("name", [m.name for m in CORPUS if m.refused])
def test_refused_model_is_refused_with_its_code_and_whole_cause_and_a_model_alert(
        name: str, installed: dict[str, tuple[Path, object]], corpus_client: TeeClient) -> None:
    model = next(m for m in CORPUS if m.name == name)
    _, outcome = installed[name]
    assert isinstance(outcome, EdbError) and outcome.code == model.refused, outcome
    assert name not in {p.name for p in corpus_client.list_installed()}  # nothing installed
    reported = ErrorInfo.from_exception(outcome)  # what the installer puts in the twin and its event
    assert reported.code == model.refused and len(reported.message) <= MAX_ERROR_MESSAGE
    if name == "unknown-operator":
        # ONNX Runtime's root cause, last in its message, and the exception type: not cut off
        assert reported.message.startswith("ONNX Runtime refused the model: ")
        assert "No Op registered for NoSuchOperator" in reported.message
        assert "InvalidGraph" in reported.message or "Fail" in reported.message
    alert = classify(ModuleEvent(EventKind.PACKAGE_FAILED, "package_installer", name, "1.0.0", error=reported,
                                 retryable=False))
    assert alert is not None and alert.alert_type is AlertType.MODEL and alert.severity == "error"
    assert alert.message == reported.message


@pytest.mark.parametrize("model", [m for m in CORPUS if m.metadata], ids=lambda m: m.name)
def test_custom_metadata_map_survives_packaging_and_the_tee_loader(model: CorpusModel, tmp_path: Path) -> None:
    """The TEE's loader (the layout's graph as the TEE builds it) keeps ``custom_metadata_map``."""
    data = model.build()
    expected = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert set(model.metadata) <= set(expected)
    assert all(expected[k] == v for k, v in model.metadata.items() if v)
    layout = onnx_layout.convert(data)
    buf = SecureBuffer(len(layout))
    buf.mm[:len(layout)] = layout
    empty = tmp_path / "ort-empty"
    empty.mkdir()
    try:
        session, _, _ = create_session(buf, prepack=False, empty_dir=empty)
        assert session.get_modelmeta().custom_metadata_map == expected
        del session
    finally:
        buf.close()


def test_preflight_decides_as_the_tee_did(installed: dict[str, tuple[Path, object]]) -> None:
    """`edb package build`'s preflight (the TEE's own loader, in this process) accepts exactly the
    models the TEE installed and refuses the others, naming the TEE's code."""
    from edb_tee.preflight import preflight

    for name, (path, outcome) in installed.items():
        media = "application/onnx"
        with open(path, "rb") as fh:
            try:
                report = preflight(fh, os.fstat(fh.fileno()).st_size, media)
            except EdbError as exc:
                assert exc.code == "CPK_MODEL_UNSUPPORTED"
                assert isinstance(outcome, EdbError) and f"({outcome.code})" in exc.message, (name, exc)
                continue
        assert not isinstance(outcome, Exception), (name, outcome)
        assert report.weights == (COPIED if name in NEED_COPY else IN_PLACE), name


def test_copied_weights_never_reach_a_file_or_a_descriptor(
        installed: dict[str, tuple[Path, object]], corpus_client: TeeClient, corpus_tee: TeeProcess,
        corpus_device: Device) -> None:
    """With models loaded both ways (in place and copied), no file under the device directory or the
    temp directory, and nothing behind any descriptor the TEE holds (files, memfds), contains a
    64-byte window of a copied model's weights."""
    from test_tee_client_memory_scan import PlaintextIndex, scan_files

    handles = [corpus_client.load_model(n) for n in ("conv-nchwc", "magika", "ocr-cls")]
    try:
        for name in ("conv-nchwc", "magika"):
            index = PlaintextIndex(installed[name][0].read_bytes()[-262_144:])  # the weights' tail
            assert scan_files([corpus_device.state_dir], index) == []
            assert [p for p in corpus_device.state_dir.rglob("*") if p.is_file() and "ort-empty" in str(p)] == []
            for fd in Path(f"/proc/{corpus_tee.pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue  # closed meanwhile
                if target.startswith("/") or target.startswith("/memfd:"):
                    with open(fd, "rb") as f:
                        assert index.find(f.read()) is None, target
    finally:
        for h in handles:
            corpus_client.unload(h)
