"""Where the time of a TEE ``infer`` call goes: four ways to run the same model, interleaved.

1. ``base``: ONNX Runtime in this process (the TEE's session options).
2. ``floor``: the same model in another Python process behind a Unix socket, with the least code
   that can serve it (read the input bytes into a reused buffer, run, send the output bytes): what
   any process boundary costs here (two context switches, two kernel copies, caches the other
   process and the run have evicted).
3. ``raw``: the TEE service, driven by a minimal client that sends a pre-encoded infer frame and
   reads the reply without decoding it: the floor plus the service's per-call work (its read,
   the fast lane's match, the model manager's checks, encoding and sending the outputs).
4. ``client``: ``TeeClient.infer``: the above plus the client library (pool, encode, decode).

Stages (p50 differences): ``transport_floor = floor - base``, ``tee_service = raw - floor``,
``client_library = client - raw``; their sum is the added latency ``client - base``. Blocks of each
variant alternate with pauses (ONNX Runtime workers spin for a while after a run), so all four see
the same load from other processes.

Usage: ``.venv/bin/python bench/tee_call_breakdown.py [--calls 2000]``. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _models import mlp
from inference_overhead import GAP_S, OUT, percentiles

# the floor server: as little Python per call as can serve a model behind a socket
FLOOR_SERVER = r"""
import socket, struct, sys
import numpy as np, onnxruntime as ort
from edb_tee.models import session_options
model_path, sock_path, rows, cols = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
session = ort.InferenceSession(open(model_path, "rb").read(), session_options(prepack=True),
                               providers=["CPUExecutionProvider"])
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sock_path)
listener.listen(1)
conn, _ = listener.accept()
need = 4 + rows * cols * 4
buf = bytearray(need)
view = memoryview(buf)
while True:
    got = 0
    while got < need:
        n = conn.recv_into(view[got:])
        if n == 0:
            sys.exit(0)
        got += n
    x = np.frombuffer(buf, np.float32, rows * cols, 4).reshape(rows, cols)
    y = session.run(None, {"input": x})[0]
    conn.sendmsg([struct.pack("<I", y.nbytes), y.data.cast("B")])
"""


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    while len(view):
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("closed")
        view = view[n:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per variant for the small model")
    parser.add_argument("--blocks", type=int, default=20)
    args = parser.parse_args()

    from _tee import build_and_install, provision_device, start_tee

    from edb.ort import onnxruntime as ort
    from edb.tee import RUNNER_TA, TeeClient, TeeContext
    from edb.tee.commands import LOAD_PREPACK, RunnerCmd
    from edb.tee.protocol import MsgType, Op, Text, Value, encode_tensors, value_param
    from edb.tee.types import ModelHandle
    from edb_tee.models import session_options

    load_before = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tee_call_breakdown-", dir=OUT))
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, float]] = {}
    try:
        device = provision_device(work / "pki", work / "state")
        info = device.info
        procs.append(start_tee(info.layout.root, info.layout.socket, work / "tee.log"))
        logf = open(work / "tee.log", "ab")  # noqa: SIM115 - handed to the floor servers
        tee = TeeClient(info.layout.socket)

        for name, model, x, calls in (
            ("small", mlp(512, 6), np.random.default_rng(1).standard_normal((1, 512), dtype=np.float32), args.calls),
            ("medium", mlp(2048, 4), np.random.default_rng(2).standard_normal((4, 2048), dtype=np.float32),
             max(100, args.calls // 10)),
        ):
            # install through the real flow
            build_and_install(tee, device, name, model, work)
            feeds = {"input": x}

            # 1. base
            session = ort.InferenceSession(model, session_options(prepack=True), providers=["CPUExecutionProvider"])
            expected = session.run(None, feeds)[0]

            # 2. floor
            (work / f"{name}.onnx").write_bytes(model)
            floor_path = str(work / f"floor-{name}.sock")
            procs.append(subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, str(work / f"{name}.onnx"),
                                           floor_path, str(x.shape[0]), str(x.shape[1])], stdout=logf, stderr=logf))
            while not os.path.exists(floor_path):
                time.sleep(0.01)
            floor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            floor.connect(floor_path)
            floor_head = struct.pack("<I", x.nbytes)
            floor_buf = memoryview(bytearray(4 + expected.nbytes))
            floor_data = x.data.cast("B")

            def via_floor(floor: socket.socket = floor, head: bytes = floor_head, data: memoryview = floor_data,
                          buf: memoryview = floor_buf) -> None:
                floor.sendmsg([head, data])
                recv_exact(floor, buf)

            # 3. raw: the TEE's wire protocol with a pre-encoded request
            ctx = TeeContext(info.layout.socket)
            runner = ctx.open_session(RUNNER_TA)
            loaded = json.loads(bytes(runner.invoke(RunnerCmd.LOAD_MODEL, [Text(name), Value(LOAD_PREPACK)])[0]
                                      .data))  # type: ignore[union-attr]
            handle = ModelHandle.from_json(loaded)
            raw = socket.socket(fileno=os.dup(ctx.fileno()))
            raw.setblocking(True)
            frame = bytearray(b"".join(bytes(p) for p in encode_tensors(
                MsgType.REQUEST, Op.INVOKE, 0, runner.id, RunnerCmd.INFER, value_param(handle.handle), 1,
                [("input", x)])))
            raw_buf = bytearray(1 << 20)
            raw_view = memoryview(raw_buf)

            def via_raw(raw: socket.socket = raw, frame: bytearray = frame, buf: bytearray = raw_buf,
                        view: memoryview = raw_view, counter: list[int] = [0]) -> None:  # noqa: B006
                counter[0] += 1
                frame[8:12] = (counter[0] & 0xFFFFFFFF).to_bytes(4, "little")
                raw.sendall(frame)
                got = raw.recv_into(buf)
                (length,) = struct.unpack_from("<I", buf)
                while got < length + 4:
                    got += raw.recv_into(view[got:])

            # 4. the client library
            h = tee.load_model(name, prepack=True)
            np.testing.assert_allclose(tee.infer(h, feeds)["output"], expected, rtol=1e-4, atol=1e-5)
            via_raw()
            if raw_buf[4 + 16] != 0:  # status of the reply
                raise RuntimeError("raw infer refused")
            via_floor()
            np.testing.assert_allclose(np.frombuffer(floor_buf[4:], np.float32).reshape(expected.shape), expected,
                                       rtol=1e-4, atol=1e-5)

            variants: dict[str, Callable[[], object]] = {
                "base": lambda s=session, f=feeds: s.run(None, f),
                "floor": via_floor,
                "raw": via_raw,
                "client": lambda h=h, f=feeds: tee.infer(h, f),
            }
            samples: dict[str, list[float]] = {k: [] for k in variants}
            for fn in variants.values():
                for _ in range(max(20, calls // 20)):
                    fn()
            per = max(1, calls // args.blocks)
            for _ in range(args.blocks):
                for key, fn in variants.items():
                    time.sleep(GAP_S)
                    out = samples[key]
                    for _ in range(per):
                        t0 = time.perf_counter_ns()
                        fn()
                        out.append((time.perf_counter_ns() - t0) / 1000.0)
            p50 = {k: percentiles(v)[0] for k, v in samples.items()}
            results[name] = {f"{k}_us_p50": round(v, 1) for k, v in p50.items()}
            results[name].update({
                "transport_floor_us": round(p50["floor"] - p50["base"], 1),
                "tee_service_us": round(p50["raw"] - p50["floor"], 1),
                "client_library_us": round(p50["client"] - p50["raw"], 1),
                "added_us": round(p50["client"] - p50["base"], 1),
                "floor_ratio": round(p50["floor"] / p50["base"], 3),
                "ratio": round(p50["client"] / p50["base"], 3),
                "calls": calls,
            })
            print(name, json.dumps(results[name]), file=sys.stderr)
            tee.unload(h)
            raw.close()
            ctx.close()
            floor.close()
            del session
        tee.close()
        logf.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    results["load_avg_1m"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]  # type: ignore[assignment]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
