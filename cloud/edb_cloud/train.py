"""``edb cloud train-demo``: a real model on a data set that ships with scikit-learn (nothing downloaded).

The 8x8 handwritten digits (1797 images, 64 features of 0..16) are split 75/25 with a fixed seed;
the model is a scaled logistic regression (``v1``) or a small multi-layer perceptron (``v2``,
a different model of similar accuracy, so a hot swap shows in the results), exported to ONNX with
skl2onnx. The ONNX graph has one input ``input`` (float32, ``[N, 64]``) and two outputs, ``label``
(int64, ``[N]``) and ``probabilities`` (float32, ``[N, 10]``): the inference runner relies on these.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

Variant = Literal["v1", "v2"]
INPUT_NAME = "input"
FEATURES = 64
SEED = 20261126


@dataclass(frozen=True)
class TrainedModel:
    variant: Variant
    onnx: bytes
    accuracy: float  # on the held-out quarter, computed with ONNX Runtime on the exported graph
    sklearn_accuracy: float
    test_samples: int
    description: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.onnx).hexdigest()


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    return x_train, x_test, y_train, y_test


def train_digits(variant: Variant = "v1") -> TrainedModel:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_test, y_train, y_test = load_split()
    if variant == "v1":
        classifier = LogisticRegression(max_iter=500, C=0.5)
        description = "StandardScaler + LogisticRegression(C=0.5)"
    elif variant == "v2":
        classifier = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=SEED)
        description = "StandardScaler + MLPClassifier(hidden=(64,))"
    else:
        raise ValueError(f"unknown variant {variant!r}")
    model = Pipeline([("scale", StandardScaler()), ("clf", classifier)])
    model.fit(x_train, y_train)
    sklearn_accuracy = float((model.predict(x_test) == y_test).mean())
    onnx_model = to_onnx(
        model,
        initial_types=[(INPUT_NAME, _float_tensor_type())],
        options={id(classifier): {"zipmap": False}},
        target_opset=17,
    )
    onnx_bytes = onnx_model.SerializeToString()
    return TrainedModel(variant, onnx_bytes, evaluate_onnx(onnx_bytes, x_test, y_test), sklearn_accuracy,
                        len(y_test), description)


def _float_tensor_type() -> object:
    from skl2onnx.common.data_types import FloatTensorType

    return FloatTensorType([None, FEATURES])


def evaluate_onnx(onnx_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the exported graph itself (so what ships is what was measured)."""
    from edb.ort import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    labels = session.run(["label"], {INPUT_NAME: x.astype(np.float32)})[0]
    return float((np.asarray(labels) == y).mean())
