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
