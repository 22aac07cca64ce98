"""The model corpus: ONNX models a user might bring, each with inputs to feed it and what the TEE must
do with it (serve it, bit-identical to plain ONNX Runtime, or refuse it with a code).

Shared by tests/models/test_corpus.py and bench/real_models.py (which puts tests/models on its
path), so both measure the same models. Builders are pure: bytes out, deterministic (seeded), no
file written. Three are real pretrained models that PyPI wheels ship (the `test` extra installs
them): magika's file-type classifier and rapidocr-onnxruntime's text detector, recognizer and
orientation classifier.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

Feeds = dict[str, np.ndarray]
VI = helper.make_tensor_value_info


@dataclass(frozen=True)
class CorpusModel:
    name: str
    covers: str  # what the model exercises
    build: Callable[[], bytes]
    feeds: Callable[[], list[Feeds]]  # one or more requests (different shapes for dynamic dimensions)
    refused: str | None = None  # the TEE's code when it must refuse the model at install
    real: bool = False  # a pretrained model shipped in a PyPI wheel
    metadata: dict[str, str] = field(default_factory=dict)  # custom_metadata_map it must keep


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _f32(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: dict[str, np.ndarray], *,
           opset: int = 17, ir: int = 8, extra_opsets: tuple[tuple[str, int], ...] = (),
           metadata: dict[str, str] | None = None) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="edb-corpus")
    model.ir_version = ir
    if metadata:
        helper.set_model_props(model, metadata)
    return model.SerializeToString()


# ------------------------------------------------------------------------------ built models


def conv_nchwc() -> bytes:
    """The issue's failing shape: a 512x256x5x1 Conv weight that x86's NCHWc transformer reorders."""
    rng = _rng(1)
    return _model([helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[2, 0, 2, 0]),
                   helper.make_node("Relu", ["c"], ["y"])],
                  [VI("x", TensorProto.FLOAT, ["N", 256, 64, 1])], [VI("y", TensorProto.FLOAT, None)],
                  {"W": _f32(rng, 512, 256, 5, 1, scale=0.05), "B": _f32(rng, 512)})


def conv_bn_residual() -> bytes:
    """A ResNet basic block: Conv+BatchNorm+Relu twice and a residual Add (Conv+BN fusion reads weights)."""
    rng = _rng(2)
    c = 64
    inits: dict[str, np.ndarray] = {}
    nodes = []
    prev = "x"
    for i in range(2):
        inits |= {f"W{i}": _f32(rng, c, c, 3, 3, scale=0.05), f"s{i}": _f32(rng, c), f"b{i}": _f32(rng, c),
                  f"m{i}": _f32(rng, c), f"v{i}": np.abs(_f32(rng, c)) + 0.5}
        nodes += [helper.make_node("Conv", [prev, f"W{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"c{i}", f"s{i}", f"b{i}", f"m{i}", f"v{i}"], [f"n{i}"])]
        prev = f"n{i}"
        if i == 0:
            nodes.append(helper.make_node("Relu", [prev], ["r0"]))
            prev = "r0"
    nodes += [helper.make_node("Add", [prev, "x"], ["sum"]), helper.make_node("Relu", ["sum"], ["y"])]
    return _model(nodes, [VI("x", TensorProto.FLOAT, ["N", c, 32, 32])], [VI("y", TensorProto.FLOAT, None)], inits)


def depthwise_dynamic_hw() -> bytes:
    """MobileNet-style depthwise (group = channels) + pointwise Conv on a dynamic H x W input, then a
    global average pool: any image size."""
    rng = _rng(3)
    c = 32
    return _model([
        helper.make_node("Conv", ["image", "Wstem", "Bstem"], ["s"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["s", "lo", "hi"], ["s6"]),
        helper.make_node("Conv", ["s6", "Wdw", "Bdw"], ["d"], pads=[1, 1, 1, 1], group=c),
        helper.make_node("Relu", ["d"], ["dr"]),
        helper.make_node("Conv", ["dr", "Wpw", "Bpw"], ["p"]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["features"]),
        helper.make_node("Softmax", ["features"], ["probabilities"], axis=1),
    ], [VI("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [VI("features", TensorProto.FLOAT, None), VI("probabilities", TensorProto.FLOAT, None)],
        {"Wstem": _f32(rng, c, 3, 3, 3, scale=0.2), "Bstem": _f32(rng, c), "lo": np.array(0, np.float32),
         "hi": np.array(6, np.float32), "Wdw": _f32(rng, c, 1, 3, 3, scale=0.3), "Bdw": _f32(rng, c),
         "Wpw": _f32(rng, 128, c, 1, 1, scale=0.1), "Bpw": _f32(rng, 128)})


def multi_io_dtypes() -> bytes:
    """Several named inputs of their own dtypes (float32, int64, int32, uint8, bool) and outputs of
    float32, int64, int32, uint8 and bool: a model is not one 2-D float input."""
    rng = _rng(9)
    return _model([
        helper.make_node("MatMul", ["features", "W"], ["h"]),
        helper.make_node("Cast", ["pixels"], ["pf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pf", "axes1"], ["pm"], keepdims=1),
        helper.make_node("Add", ["h", "pm"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["best"], axis=1, keepdims=0),
        helper.make_node("Add", ["best", "offset"], ["label"]),
        helper.make_node("Cast", ["label"], ["label32"], to=TensorProto.INT32),
        helper.make_node("Add", ["label32", "bias32"], ["shifted"]),
        helper.make_node("Greater", ["scores", "zero"], ["positive"]),
        helper.make_node("And", ["positive", "mask"], ["kept"]),
        helper.make_node("Cast", ["pm"], ["level"], to=TensorProto.UINT8),
    ], [VI("features", TensorProto.FLOAT, ["N", 16]), VI("offset", TensorProto.INT64, ["N"]),
        VI("bias32", TensorProto.INT32, ["N"]), VI("pixels", TensorProto.UINT8, ["N", 64]),
        VI("mask", TensorProto.BOOL, ["N", 8])],
        [VI("scores", TensorProto.FLOAT, None), VI("label", TensorProto.INT64, None),
         VI("shifted", TensorProto.INT32, None), VI("kept", TensorProto.BOOL, None),
         VI("level", TensorProto.UINT8, None)],
        {"W": _f32(rng, 16, 8), "axes1": np.array([1], np.int64), "zero": np.array(0, np.float32)}, opset=18)


def float16_mlp() -> bytes:
    """float16 end to end: input, weights (1 MiB) and output."""
    rng = _rng(10)
    return _model([helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
                   helper.make_node("MatMul", ["r", "W2"], ["b"]), helper.make_node("Add", ["b", "B2"], ["y"])],
                  [VI("x", TensorProto.FLOAT16, ["N", 256])], [VI("y", TensorProto.FLOAT16, None)],
                  {"W1": _f32(rng, 256, 1024, scale=0.05).astype(np.float16),
                   "W2": _f32(rng, 1024, 256, scale=0.05).astype(np.float16),
                   "B2": _f32(rng, 256).astype(np.float16)})


def strings_in_and_out() -> bytes:
    """String tensors both ways: normalise text, map tokens to ids (ai.onnx.ml LabelEncoder), and
    answer the normalised strings and a per-token score."""
    words = ["cat", "dog", "bird", "fish"]
    return _model([
        helper.make_node("StringNormalizer", ["text"], ["norm"], case_change_action="LOWER", locale="C"),
        helper.make_node("LabelEncoder", ["norm"], ["ids"], domain="ai.onnx.ml", keys_strings=words,
                         values_int64s=list(range(len(words))), default_int64=-1),
        helper.make_node("Cast", ["ids"], ["idf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["idf", "k"], ["score"]),
    ], [VI("text", TensorProto.STRING, ["N"])],
        [VI("norm", TensorProto.STRING, None), VI("ids", TensorProto.INT64, None),
         VI("score", TensorProto.FLOAT, None)],
        {"k": np.array(0.5, np.float32)}, extra_opsets=(("ai.onnx.ml", 2),))


def transformer_block() -> bytes:
    """One pre-norm transformer encoder block: Gather of int64 token ids into an embedding, positional
    embedding, LayerNormalization, 4-head self-attention (MatMul, Transpose, Softmax), residuals, a
    GELU (Erf) MLP, a final LayerNorm and logits. Dynamic batch and sequence length."""
    rng = _rng(11)
    vocab, d, heads, ff, max_len = 1000, 128, 4, 512, 64
    hd = d // heads
    inits = {
        "emb": _f32(rng, vocab, d, scale=0.1), "pos": _f32(rng, max_len, d, scale=0.1),
        "ln1_s": np.ones(d, np.float32), "ln1_b": np.zeros(d, np.float32),
        "Wq": _f32(rng, d, d, scale=0.08), "Wk": _f32(rng, d, d, scale=0.08), "Wv": _f32(rng, d, d, scale=0.08),
        "Wo": _f32(rng, d, d, scale=0.08), "ln2_s": _f32(rng, d) * 0.1 + 1, "ln2_b": _f32(rng, d, scale=0.1),
        "W1": _f32(rng, d, ff, scale=0.08), "B1": _f32(rng, ff, scale=0.1), "W2": _f32(rng, ff, d, scale=0.08),
        "lnf_s": np.ones(d, np.float32), "lnf_b": np.zeros(d, np.float32), "Wout": _f32(rng, d, 16, scale=0.1),
        "heads_shape": np.array([0, 0, heads, hd], np.int64), "merge_shape": np.array([0, 0, d], np.int64),
        "scale": np.array(1 / np.sqrt(hd), np.float32), "half": np.array(0.5, np.float32),
        "one": np.array(1.0, np.float32), "rsqrt2": np.array(1 / np.sqrt(2), np.float32),
        "zero1": np.array([0], np.int64), "one1": np.array([1], np.int64), "axis1": np.array([1], np.int64),
    }
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "tokens"], ["tok"]),
        n("Shape", ["tokens"], ["tshape"]),
        n("Gather", ["tshape", "one1"], ["seq_len"]),  # [T]
        n("Slice", ["pos", "zero1", "seq_len", "zero1"], ["pos_t"]),
        n("Add", ["tok", "pos_t"], ["h0"]),
        n("LayerNormalization", ["h0", "ln1_s", "ln1_b"], ["x1"], axis=-1, epsilon=1e-5),
    ]
    for p in ("q", "k", "v"):
        nodes += [n("MatMul", ["x1", f"W{p}"], [f"{p}0"]), n("Reshape", [f"{p}0", "heads_shape"], [f"{p}1"]),
                  n("Transpose", [f"{p}1"], [f"{p}h"], perm=[0, 2, 1, 3] if p != "k" else [0, 2, 3, 1])]
    nodes += [
        n("MatMul", ["qh", "kh"], ["att0"]), n("Mul", ["att0", "scale"], ["att1"]),
        n("Softmax", ["att1"], ["att"], axis=-1), n("MatMul", ["att", "vh"], ["ctx0"]),
        n("Transpose", ["ctx0"], ["ctx1"], perm=[0, 2, 1, 3]), n("Reshape", ["ctx1", "merge_shape"], ["ctx"]),
        n("MatMul", ["ctx", "Wo"], ["attn_out"]), n("Add", ["h0", "attn_out"], ["h1"]),
        n("LayerNormalization", ["h1", "ln2_s", "ln2_b"], ["x2"], axis=-1, epsilon=1e-5),
        n("MatMul", ["x2", "W1"], ["f0"]), n("Add", ["f0", "B1"], ["f1"]),
        n("Mul", ["f1", "rsqrt2"], ["g0"]), n("Erf", ["g0"], ["g1"]), n("Add", ["g1", "one"], ["g2"]),
        n("Mul", ["f1", "g2"], ["g3"]), n("Mul", ["g3", "half"], ["gelu"]),
        n("MatMul", ["gelu", "W2"], ["f2"]), n("Add", ["h1", "f2"], ["h2"]),
        n("LayerNormalization", ["h2", "lnf_s", "lnf_b"], ["hidden"], axis=-1, epsilon=1e-5),
        n("MatMul", ["hidden", "Wout"], ["logits"]),
    ]
    return _model(nodes, [VI("tokens", TensorProto.INT64, ["B", "T"])],
                  [VI("logits", TensorProto.FLOAT, None), VI("hidden", TensorProto.FLOAT, None)], inits)


LABELS = "cat,dog,bird,fish"


def classifier_with_metadata() -> bytes:
    """A Gemm classifier whose labels and preprocessing live in custom_metadata_map (as an OCR
    recognizer keeps its character dictionary): the TEE must keep them with the graph."""
    rng = _rng(12)
    return _model([helper.make_node("Gemm", ["x", "W", "B"], ["logits"], transB=1),
                   helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
                   helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0)],
                  [VI("x", TensorProto.FLOAT, ["N", 32])],
                  [VI("probabilities", TensorProto.FLOAT, None), VI("label", TensorProto.INT64, None)],
                  {"W": _f32(rng, 4, 32), "B": _f32(rng, 4)},
                  metadata={"labels": LABELS, "mean": "0.5", "std": "0.25"})


def mlp_at_opset(opset: int, ir: int) -> Callable[[], bytes]:
    def build() -> bytes:
        rng = _rng(20 + opset)
        # Gemm + Relu + Softmax: defined with the same meaning from opset 9 to the newest
        return _model([helper.make_node("Gemm", ["x", "W", "B"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                       helper.make_node("Gemm", ["r", "W2", "B2"], ["z"]),
                       helper.make_node("Softmax", ["z"], ["y"], axis=1)],
                      [VI("x", TensorProto.FLOAT, ["N", 64])], [VI("y", TensorProto.FLOAT, None)],
                      {"W": _f32(rng, 64, 256, scale=0.1), "B": _f32(rng, 256), "W2": _f32(rng, 256, 10, scale=0.1),
                       "B2": _f32(rng, 10)}, opset=opset, ir=ir)
    build.__doc__ = f"An MLP at opset {opset} (IR {ir})."
    return build


def sklearn_classifier(zipmap: bool) -> Callable[[], bytes]:
    def build() -> bytes:
        from skl2onnx import to_onnx
        from sklearn.datasets import load_digits
        from sklearn.ensemble import RandomForestClassifier

        x, y = load_digits(return_X_y=True)
        clf = RandomForestClassifier(n_estimators=8, max_depth=6, random_state=0).fit(x.astype(np.float32), y)
        onx = to_onnx(clf, x[:1].astype(np.float32), options={"zipmap": zipmap}, target_opset={"": 17, "ai.onnx.ml": 3})
        return bytes(onx.SerializeToString())
    build.__doc__ = f"scikit-learn RandomForest (TreeEnsembleClassifier, ai.onnx.ml) via skl2onnx, zipmap={zipmap}."
    return build


def sequence_only() -> bytes:
    """Its only output is a sequence of tensors: nothing can cross the boundary."""
    return _model([helper.make_node("SequenceConstruct", ["a", "b"], ["seq"])],
                  [VI("a", TensorProto.FLOAT, [2]), VI("b", TensorProto.FLOAT, [2])],
                  [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)], {})


def unknown_operator() -> bytes:
    """A well-formed ONNX file with an operator ONNX Runtime does not have: refused with the cause."""
    rng = _rng(13)
    return _model([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("NoSuchOperator", ["h"], ["y"])],
                  [VI("x", TensorProto.FLOAT, ["N", 64])], [VI("y", TensorProto.FLOAT, None)],
                  {"W": _f32(rng, 64, 64)})


# ------------------------------------------------------------------------------ real models


def _wheel_file(package: str, relative: str) -> Path:
    """A file inside an installed wheel; a missing test dependency fails loudly (never a skip)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the test dependency {package!r} is not installed: pip install -e '.[test]'")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise RuntimeError(f"{package} no longer ships {relative}")
    return path


def _reader(package: str, relative: str) -> Callable[[], bytes]:
    def build() -> bytes:
        return _wheel_file(package, relative).read_bytes()
    return build


MAGIKA = ("magika", "models/standard_v3_3/model.onnx")
OCR_DET = ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx")
OCR_REC = ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx")
OCR_CLS = ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx")


def _magika_feeds() -> list[Feeds]:
    # magika reads the first and last bytes of a file as int32 byte values, padded with 256
    rng = _rng(30)
    content = np.frombuffer(b"#!/usr/bin/env python3\nimport sys\nprint('hello', sys.argv)\n" * 20, np.uint8)
    row = np.full(2048, 256, np.int32)
    row[:1024] = content[:1024]
    row[1024:] = content[-1024:]
    noise = rng.integers(0, 257, (3, 2048)).astype(np.int32)
    return [{"bytes": row[None, :]}, {"bytes": noise}]


def _image(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    # normalised like rapidocr does ((x / 255 - 0.5) / 0.5), from a synthetic page: stripes of "text"
    img = np.full((n, 3, h, w), 0.9, np.float32)
    for row in range(4, h - 8, 16):
        img[:, :, row:row + 6, 8:w - 8] = rng.uniform(0, 0.3, (n, 3, 6, w - 16))
    return ((img - 0.5) / 0.5).astype(np.float32)


# ------------------------------------------------------------------------------ the corpus


def _one(**arrays: np.ndarray) -> Callable[[], list[Feeds]]:
    return lambda: [dict(arrays)]


def _corpus() -> list[CorpusModel]:
    r = _rng(40)
    return [
        CorpusModel("conv-nchwc", "Conv 512x256x5x1 that the NCHWc transformer reorders (weights copied)", conv_nchwc,
                    _one(x=_f32(r, 1, 256, 64, 1))),
        CorpusModel("conv-bn-residual", "Conv+BatchNorm fusion, residual Add", conv_bn_residual,
                    _one(x=_f32(r, 2, 64, 32, 32))),
        CorpusModel("depthwise-dynamic-hw", "depthwise + pointwise Conv, dynamic H x W (two sizes), 2 outputs",
                    depthwise_dynamic_hw,
                    lambda: [{"image": _f32(_rng(41), 1, 3, 96, 128)}, {"image": _f32(_rng(42), 2, 3, 61, 47)}]),
        CorpusModel("multi-io-dtypes", "5 inputs and 5 outputs: float32, int64, int32, uint8, bool", multi_io_dtypes,
                    lambda: [{"features": _f32(_rng(43), 3, 16), "offset": np.array([0, 10, 100], np.int64),
                              "bias32": np.array([-1, 0, 1], np.int32),
                              "pixels": _rng(44).integers(0, 256, (3, 64)).astype(np.uint8),
                              "mask": _rng(45).integers(0, 2, (3, 8)).astype(bool)}]),
        CorpusModel("float16-mlp", "float16 input, weights and output", float16_mlp,
                    _one(x=_f32(r, 4, 256).astype(np.float16))),
        CorpusModel("strings", "string tensors in and out (StringNormalizer, ai.onnx.ml LabelEncoder)",
                    strings_in_and_out,
                    lambda: [{"text": np.array(["Cat", "DOG", "unicorn", "fIsh", "bird", "ß"], dtype=object)}]),
        CorpusModel("transformer-block", "Gather on int64 ids, LayerNorm, 4-head attention, GELU MLP, dynamic T",
                    transformer_block,
                    lambda: [{"tokens": _rng(46).integers(0, 1000, (2, 24)).astype(np.int64)},
                             {"tokens": _rng(47).integers(0, 1000, (1, 64)).astype(np.int64)}]),
        CorpusModel("metadata-classifier", "custom_metadata_map kept (labels, mean, std)", classifier_with_metadata,
                    _one(x=_f32(r, 5, 32)), metadata={"labels": LABELS, "mean": "0.5", "std": "0.25"}),
        CorpusModel("mlp-opset9", "opset 9, IR 4", mlp_at_opset(9, 4), _one(x=_f32(r, 3, 64))),
        CorpusModel("mlp-opset13", "opset 13, IR 7", mlp_at_opset(13, 7), _one(x=_f32(r, 3, 64))),
        CorpusModel("mlp-opset21", "opset 21, IR 10", mlp_at_opset(21, 10), _one(x=_f32(r, 3, 64))),
        CorpusModel("sklearn-forest", "skl2onnx RandomForest, zipmap=False: int64 label + float32 probabilities",
                    sklearn_classifier(zipmap=False), lambda: [{"X": _digits(8)}]),
        CorpusModel("sklearn-forest-zipmap", "skl2onnx with ZipMap: label served, seq(map) output left out",
                    sklearn_classifier(zipmap=True), lambda: [{"X": _digits(8)}]),
        CorpusModel("magika", "REAL: magika's file-type classifier (Conv-heavy; weights copied)", _reader(*MAGIKA),
                    _magika_feeds, real=True),
        CorpusModel("ocr-det", "REAL: rapidocr PP-OCRv4 text detector, dynamic H x W", _reader(*OCR_DET),
                    lambda: [{"x": _image(_rng(48), 1, 96, 160)}, {"x": _image(_rng(49), 1, 64, 96)}], real=True),
        CorpusModel("ocr-rec", "REAL: rapidocr PP-OCRv4 text recognizer, its 6623-character dictionary in "
                    "custom_metadata_map", _reader(*OCR_REC),
                    lambda: [{"x": _image(_rng(50), 2, 48, 160)}], real=True, metadata={"character": ""}),
        CorpusModel("ocr-cls", "REAL: rapidocr text orientation classifier", _reader(*OCR_CLS),
                    lambda: [{"x": _image(_rng(51), 3, 48, 192)}], real=True),
        CorpusModel("sequence-output", "only a sequence output: refused", sequence_only,
                    _one(a=np.zeros(2, np.float32), b=np.ones(2, np.float32)), refused="TEE_OUTPUT_UNSUPPORTED"),
        CorpusModel("unknown-operator", "an operator ONNX Runtime lacks: refused with ORT's cause", unknown_operator,
                    _one(x=_f32(r, 1, 64)), refused="TEE_MODEL_INVALID"),
    ]


def _digits(n: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data[:n].astype(np.float32)


CORPUS: list[CorpusModel] = _corpus()
BY_NAME = {m.name: m for m in CORPUS}
SERVED = [m for m in CORPUS if m.refused is None]
