"""Real models through the TEE against plain ONNX Runtime, for every model of the corpus.

The corpus is tests/models/corpus.py (the same builders as the tests; three are real pretrained
models from the magika and rapidocr-onnxruntime wheels). For each model the TEE must serve, in
this run:

- ``install_s``: a fresh TEE service; begin_install -> evidence -> key release (done here with the
  local KEK) -> complete_install (decrypt into locked memory, convert a plain payload, validate with
  ONNX Runtime, seal);
- ``load_s``: a cold ``load_model`` after the install's warm session was dropped (unseal from
  sealed storage + session creation), and ``weights``: ``in-place`` or ``copied`` (see
  ``edb_tee.models.create_session``);
- ``peak_over_model``: the TEE process's peak RSS (VmHWM) over install + both loads, minus its RSS
  before the install, divided by the model's size (meaningless for models of a few KB: the
  session's own overhead dominates; ``peak_mb`` says how much); ``rss_after_load_mb``: its RSS once
  loaded, minus the same baseline;
- ``tee_p50_ms``/``tee_p95_ms`` against ``ort_p50_ms``/``ort_p95_ms``: the model's first request
  through ``TeeClient.infer`` against ``InferenceSession(path, session_options(prepack=...))`` in
  this process with the options the TEE used, in alternating *blocks* (both thread pools spin on 2
  cores: alternating single calls would make each pay for the other's spinning), ``--blocks``
  blocks per side of about ``--block-s`` seconds each; ``p50_ratio`` = tee / ort;
- ``identical``: every request's every output equal to plain ONNX Runtime's (value, dtype, shape).

``load_paths``: for the corpus's NCHWc Conv, a 28 MB Conv stack and an MLP, each in a fresh process: plain
``InferenceSession(path)``, the TEE's in-place load and its copied load alone (``modes``), with load
time, peak RSS and RSS once loaded over the model size (the copied way gives the TEE's buffer back
after creating the session, as the TEE does; the figures docs/tee.md quotes).

Targets (issue 10): 100% bit-identical; p50 ratio <= 1.10 where the in-process p50 >= 5 ms.
Usage: ``.venv/bin/python bench/real_models.py [--models a,b] [--blocks 6] [--block-s 0.25]``.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "models"))  # the corpus builders, shared with the tests

from _tee import DEVICE_ID, VERSION, install_released, provision_device, start_tee  # noqa: E402
from corpus import CORPUS, SERVED, CorpusModel, conv_nchwc  # noqa: E402

PLAIN_PAYLOAD = {"magika", "ocr-det", "ocr-rec", "ocr-cls"}  # packaged as plain ONNX, as users do


def rss_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def package(device: Any, model: CorpusModel, data: bytes, work: Path) -> tuple[Path, Any]:
    import datetime as dt

    from edb import onnx_layout
    from edb.cpk import PackageIdentity, Target, build

    plain = model.name in PLAIN_PAYLOAD
    now = dt.datetime.now(dt.UTC)
    ident = PackageIdentity(package_id=model.name, version=VERSION, security_version=1,
                            target=Target(device_ids=(DEVICE_ID,)), created=now - dt.timedelta(minutes=1),
                            expires=now + dt.timedelta(days=1),
                            media_type="application/onnx" if plain else onnx_layout.MEDIA_TYPE)
    out = work / f"{model.name}.cpk"
    built = build(io.BytesIO(data if plain else onnx_layout.convert(data)), out, identity=ident, kek=device.kek,
                  signer=device.signer)
    return out, built.manifest


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def timed_block(call: Any, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def identical(got: dict[str, Any], names: list[str], ref: list[Any]) -> bool:
    return sorted(got) == sorted(names) and all(
        got[n].dtype == r.dtype and got[n].shape == r.shape and np.array_equal(got[n], r)
        for n, r in zip(names, ref, strict=True))


def measure_model(model: CorpusModel, device: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from edb.ort import onnxruntime as ort
    from edb.tee import TeeClient
    from edb_tee.models import session_options

    data = model.build()
    path = work / f"{model.name}.onnx"
    path.write_bytes(data)
    pkg, manifest = package(device, model, data, work)
    layout = device.info.layout
    proc = start_tee(layout.root, layout.socket, work / "tee.log")
    tee = TeeClient(layout.socket)
    try:
        before = rss_kb(proc.pid, "VmRSS")
        t0 = time.perf_counter()
        install_released(tee, device, model.name, pkg, manifest, model.name)
        install_s = time.perf_counter() - t0
        tee.unload(tee.load_model(model.name))  # adopts, then drops, the install's warm session
        t0 = time.perf_counter()
        handle = tee.load_model(model.name)
        load_s = time.perf_counter() - t0
        peak_kb = rss_kb(proc.pid, "VmHWM") - before
        after_kb = rss_kb(proc.pid, "VmRSS") - before
        weights = next(m["weights"] for m in tee.status()["models"]["loaded"] if m["name"] == model.name)
        session = ort.InferenceSession(str(path), session_options(prepack=handle.prepacked),
                                       providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs() if o.type.startswith("tensor(")]
        requests = model.feeds()
        same = all(identical(tee.infer(handle, f), names, session.run(names, f)) for f in requests)
        feeds = requests[0]

        def through_tee() -> None:
            tee.infer(handle, feeds)

        def in_process() -> None:
            session.run(names, feeds)

        single = min(timed_block(in_process, 3) + timed_block(through_tee, 3))
        calls = max(5, min(400, int(args.block_s / max(single, 1e-6))))
        tee_t: list[float] = []
        ort_t: list[float] = []
        for block in range(args.blocks):  # alternate which side goes first
            order = [(through_tee, tee_t), (in_process, ort_t)]
            for call, sink in order if block % 2 == 0 else order[::-1]:
                sink.extend(timed_block(call, calls))
        tee.unload(handle)
        ort_p50 = percentile(ort_t, 50) * 1000
        tee_p50 = percentile(tee_t, 50) * 1000
        return {"model": model.name, "real": model.real, "bytes": len(data), "weights": weights,
                "prepacked": handle.prepacked, "install_s": round(install_s, 3), "load_s": round(load_s, 3),
                "peak_mb": round(peak_kb / 1024, 1), "peak_over_model": round(peak_kb * 1024 / len(data), 2),
                "rss_after_load_mb": round(after_kb / 1024, 1),
                "identical": same, "calls_per_block": calls,
                "ort_p50_ms": round(ort_p50, 3), "ort_p95_ms": round(percentile(ort_t, 95) * 1000, 3),
                "tee_p50_ms": round(tee_p50, 3), "tee_p95_ms": round(percentile(tee_t, 95) * 1000, 3),
                "p50_ratio": round(tee_p50 / ort_p50, 3)}
    finally:
        tee.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


# ------------------------------------------------------------------------------ load paths

LOAD_CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
from edb.ort import onnxruntime as ort
from edb_tee.hardening import SecureBuffer
from edb_tee.models import COPIED, IN_PLACE, create_session, session_options

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

path, layout, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
size = path.stat().st_size
before = rss("VmRSS")  # the TEE's own buffer (read with readinto, no second copy) counts as the model's memory
t0 = time.perf_counter()
try:
    if mode == "plain":
        s = ort.InferenceSession(str(path), session_options(prepack=False), providers=["CPUExecutionProvider"])
    else:
        buf = SecureBuffer(layout.stat().st_size)
        with open(layout, "rb") as fh:
            fh.readinto(buf.mm)
        t0 = time.perf_counter()
        empty = Path(tempfile.mkdtemp()) / "ort-empty"
        empty.mkdir()
        s, values, _ = create_session(buf, prepack=False, empty_dir=empty,
                                      modes=(IN_PLACE,) if mode == "in-place" else (COPIED,))
        if mode == "copied":  # what the TEE does once the session exists (edb_tee.models.release_copied)
            values.clear()
            buf.release()
    print(json.dumps({"mode": mode, "load_s": round(time.perf_counter() - t0, 3),
                      "peak_over_model": round((rss("VmHWM") - before) / size, 2),
                      "after_over_model": round((rss("VmRSS") - before) / size, 2)}))
except Exception as exc:
    print(json.dumps({"mode": mode, "refused": type(exc).__name__ + ": " + str(exc)[-120:]}))
"""


def mlp_bytes(mb: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    n = 2048
    layers = max(1, mb * 1024 * 1024 // (n * n * 4))
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((n, n)) * 0.01).astype(np.float32), f"W{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        prev = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def conv_stack_bytes(layers: int = 12, channels: int = 256) -> bytes:
    """A plain 3x3 Conv+Relu stack (about 28 MB at the defaults): weights the NCHWc transformer reorders."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits += [numpy_helper.from_array((rng.standard_normal((channels, channels, 3, 3)) * 0.01).astype(np.float32),
                                          f"W{i}"),
                  numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), f"B{i}")]
        nodes += [helper.make_node("Conv", [prev, f"W{i}", f"B{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    graph = helper.make_graph(nodes, "convs",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 16, 16])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def load_paths(work: Path, mlp_mb: int) -> list[dict[str, Any]]:
    rows = []
    for name, data in (("conv-nchwc", conv_nchwc()), ("conv-stack-28MB", conv_stack_bytes()),
                       (f"mlp-{mlp_mb}MB", mlp_bytes(mlp_mb))):
        from edb import onnx_layout

        path, layout = work / f"paths-{name}.onnx", work / f"paths-{name}.layout"
        path.write_bytes(data)
        with open(layout, "wb") as out_file:
            onnx_layout.convert_file(path, out_file)
        del data
        for mode in ("plain", "in-place", "copied"):
            out = subprocess.run([sys.executable, "-c", LOAD_CHILD, str(path), str(layout), mode],
                                 capture_output=True, text=True, cwd=ROOT, timeout=600)
            text = out.stdout.strip()
            line = text.splitlines()[-1] if text else json.dumps({"error": out.stderr[-300:]})
            rows.append({"model": name, "mb": round(path.stat().st_size / 1e6, 1), **json.loads(line)})
            print(json.dumps(rows[-1]), flush=True)
        path.unlink()
        layout.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="", help="comma-separated corpus names (default: every served model)")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--block-s", type=float, default=0.25)
    parser.add_argument("--mlp-mb", type=int, default=100, help="size of the MLP of the load-path comparison")
    parser.add_argument("--skip-load-paths", action="store_true")
    args = parser.parse_args()
    wanted = [n for n in args.models.split(",") if n]
    models = [m for m in SERVED if not wanted or m.name in wanted]
    unknown = set(wanted) - {m.name for m in CORPUS}
    if unknown:
        raise SystemExit(f"unknown corpus models: {sorted(unknown)}")
    with tempfile.TemporaryDirectory(prefix="edb-real-models-") as tmp:
        work = Path(tmp)
        device = provision_device(work / "pki", work / "state")
        rows = []
        for model in models:
            row = measure_model(model, device, work, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
        paths = [] if args.skip_load_paths else load_paths(work, args.mlp_mb)
    slow = [r for r in rows if r["ort_p50_ms"] >= 5]
    summary = {
        "bench": "real_models", "models": len(rows), "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "bit_identical": f"{sum(r['identical'] for r in rows)}/{len(rows)}",
        "copied_weights": [r["model"] for r in rows if r["weights"] == "copied"],
        "p50_ratio_where_ort_p50_ge_5ms": {r["model"]: r["p50_ratio"] for r in slow},
        "p50_ratio_max_where_ort_p50_ge_5ms": max((r["p50_ratio"] for r in slow), default=None),
        "p50_ratio_median_all": round(statistics.median(r["p50_ratio"] for r in rows), 3) if rows else None,
        "runs": rows, "load_paths": paths,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
