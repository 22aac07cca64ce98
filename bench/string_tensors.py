"""What string tensors cost at the TEE boundary, against the same model answering integer labels.

Two scikit-learn logistic regressions (20 features, 4 classes, ``zipmap=False``) trained on the same
data, one on string labels (``label`` is a string tensor), one on integer labels: each installed
in the TEE as a package, called in-process (ONNX Runtime with the TEE's session options: the
baseline) and through ``TeeClient.infer``, in alternating blocks, at batch 1 and batch 64. The
integer-label model takes the numeric path end to end; the string-label model's reply carries a
string tensor (encoded by the service, parsed in full by the client). Also the codec alone: one
string tensor encoded and decoded (256 and 10,000 eight-character labels).

Usage: ``.venv/bin/python bench/string_tensors.py [--calls 1000] [--blocks 20]``. Last line: one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / ".out"
GAP_S = 0.02  # let ONNX Runtime's spinning worker of one side stop before the other side runs


def classifiers() -> tuple[bytes, bytes, np.ndarray]:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 20)).astype(np.float32)
    y = np.argmax(x[:, :4], axis=1)
    names = np.array(["cat-0001", "dog-0002", "eel-0003", "fox-0004"], dtype=object)
    strings = to_onnx(LogisticRegression(max_iter=500).fit(x, names[y]), x[:1], options={"zipmap": False})
    ints = to_onnx(LogisticRegression(max_iter=500).fit(x, y.astype(np.int64)), x[:1], options={"zipmap": False})
    return strings.SerializeToString(), ints.SerializeToString(), x


def measure(base: Callable[[], Any], tee: Callable[[], Any], calls: int, blocks: int) -> tuple[float, float]:
    """p50 of each side in microseconds, in alternating blocks after a warm-up."""
    for _ in range(max(20, calls // 20)):
        base()
        tee()
    b: list[float] = []
    t: list[float] = []
    per = max(1, calls // blocks)
    for _ in range(blocks):
        for fn, out in ((base, b), (tee, t)):
            time.sleep(GAP_S)
            for _ in range(per):
                t0 = time.perf_counter_ns()
                fn()
                out.append((time.perf_counter_ns() - t0) / 1000.0)
    return float(np.percentile(b, 50)), float(np.percentile(t, 50))


def codec_us(count: int, repeat: int) -> float:
    """Best time of encoding and decoding one string tensor of ``count`` labels (microseconds)."""
    from edb.tee.protocol import MsgType, Op, decode, encode_tensors

    labels = np.array([f"label-{i % 97:02d}" for i in range(count)], dtype=object)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        parts = encode_tensors(MsgType.RESPONSE, Op.INVOKE, 1, 1, 2, b"", 0, [("label", labels)])
        out = decode(bytearray(b"".join(bytes(p) for p in parts)[4:]))
        best = min(best, (time.perf_counter_ns() - t0) / 1000.0)
    assert out.params[0].array.tolist() == labels.tolist()  # type: ignore[union-attr]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per side and case")
    parser.add_argument("--blocks", type=int, default=20, help="alternating baseline/TEE blocks per case")
    args = parser.parse_args()

    from _tee import build_and_install, provision_device, start_tee

    from edb.ort import onnxruntime as ort
    from edb.tee import TeeClient
    from edb_tee.models import session_options

    load_before = os.getloadavg()
    strings, ints, x = classifiers()
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="string_tensors-", dir=OUT))
    proc: subprocess.Popen[bytes] | None = None
    results: dict[str, dict[str, float]] = {}
    try:
        device = provision_device(work / "pki", work / "state")
        proc = start_tee(device.info.layout.root, device.info.layout.socket, work / "tee.log")
        tee = TeeClient(device.info.layout.socket)
        for name, model in (("strings", strings), ("ints", ints)):
            build_and_install(tee, device, name, model, work)
            session = ort.InferenceSession(model, session_options(prepack=True), providers=["CPUExecutionProvider"])
            h = tee.load_model(name, prepack=True)
            for rows in (1, 64):
                feeds = {"X": x[:rows]}
                want = session.run(None, feeds)[0]
                assert tee.infer(h, feeds)["label"].tolist() == want.tolist()
                b50, t50 = measure(lambda s=session, f=feeds: s.run(None, f),  # type: ignore[misc]
                                   lambda h=h, f=feeds: tee.infer(h, f), args.calls, args.blocks)  # type: ignore[misc]
                key = f"{name}_batch{rows}"
                results[key] = {"base_us_p50": round(b50, 1), "tee_us_p50": round(t50, 1),
                                "added_us_p50": round(t50 - b50, 1)}
                print(key, json.dumps(results[key]), file=sys.stderr)
            tee.unload(h)
        tee.close()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)

    summary = {
        "string_label_added_us_p50": results["strings_batch1"]["added_us_p50"],
        "int_label_added_us_p50": results["ints_batch1"]["added_us_p50"],
        "string_minus_int_added_us_p50": round(results["strings_batch1"]["added_us_p50"]
                                               - results["ints_batch1"]["added_us_p50"], 1),
        "string_label_batch64_added_us_p50": results["strings_batch64"]["added_us_p50"],
        "int_label_batch64_added_us_p50": results["ints_batch64"]["added_us_p50"],
        "string_minus_int_batch64_added_us_p50": round(results["strings_batch64"]["added_us_p50"]
                                                       - results["ints_batch64"]["added_us_p50"], 1),
        "codec_256_labels_us": round(codec_us(256, 200), 1),
        "codec_10k_labels_us": round(codec_us(10_000, 20), 1),
        "load_avg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "detail": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
