"""The benches' ONNX model generators (random float32 weights, opset 17, IR version 9).

Shared by bench/inference_overhead.py, bench/model_load.py and bench/tee_call_breakdown.py, so the
figures they report are about the same models. tests/tee has its own (unscaled) generators.
"""

from __future__ import annotations

import numpy as np
from onnx import GraphProto, TensorProto, helper, numpy_helper


def _serialize(graph: GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    data: bytes = model.SerializeToString()
    return data


def mlp(dim: int, layers: int, seed: int = 0) -> bytes:
    """``layers`` x (MatMul by a dim x dim weight, Relu) from ``input`` [N, dim] to ``output`` [N, dim].

    The weights are scaled by 1/sqrt(dim) so activations stay in range through the layers."""
    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "input"
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((dim, dim), dtype=np.float32) * (dim ** -0.5),
                                             f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        out = "output" if i == layers - 1 else f"r{i}"
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        prev = out
    return _serialize(helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, dim])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, dim])], inits))


def relu_only(dim: int) -> bytes:
    """One Relu from ``input`` [N, dim] to ``output`` [N, dim]: no weights, all cost is moving tensors."""
    return _serialize(helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])], "relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, dim])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, dim])]))


def image_head(channels: int = 8, seed: int = 0) -> bytes:
    """A light vision head: ``image`` [N, 3, H, W] -> Conv 3x3 stride 2 (``channels``) -> Relu ->
    GlobalAveragePool -> ``features`` [N, channels, 1, 1]: the input's size dominates, not compute."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3), dtype=np.float32) * 0.2, "w")
    b = numpy_helper.from_array(np.zeros(channels, np.float32), "b")
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["features"])]
    return _serialize(helper.make_graph(
        nodes, "image_head", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, None, None])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, channels, 1, 1])], [w, b]))
