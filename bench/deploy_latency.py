"""Deploy latency: seconds from the module twin desired patch to the runner serving the new version.

For models of about 1, 10 and 100 MB, on a fresh local stack (its own state directory and
loopback address): build the confidential package (aligned ONNX layout, DEK wrapped under the Key
Vault KEK, signed), publish it to Azurite, patch ``packages.digits`` on the installer's module twin
and time until the runner's reported ``model`` says ``serving`` that version. That path covers the
HTTPS download, the hash check, the TEE's verification, key release (nonce, evidence, policy, Key
Vault unwrapKey, JWE), decryption in the TEE, sealing, the notification and the ONNX Runtime load.

Baseline, same run, same machine, measured right after each rollout: the same ONNX model in
plaintext with no protection at all, fetched from the same storage service (a second Azurite
process of the same npm package, plain HTTP, an anonymous public-read blob: no TLS, no SAS, no
hash) with ``requests`` and loaded with ``onnxruntime.InferenceSession(bytes)`` plus one inference.
For comparison the old baseline is measured too: the model from Python's ``http.server`` (plain
HTTP), which serves files faster than Azurite does on this machine (``plain_http_server_s``).

Stages (medians, seconds) come from the modules' own log lines: ``patch_to_job`` (the twin patch
reaching the installer's reconcile loop), ``download`` (HTTPS download with both hashes, or
``downloading`` -> ``verifying``), ``verify`` (the TEE's key-less verification and the installer's
payload digest check), ``release`` (nonce, evidence, key release), ``install`` (the TEE's decrypt,
check, seal and commit), ``runner_load`` (installer done -> runner serving: notification through
edgeHub, list, load) and ``report`` (the runner's reported property reaching the bench through the
hub). The load average is printed with the figures: on a shared 2-core machine it matters.

The simulated sensor keeps sending frames during the rollouts (the runner serves them with the old
version while the new one installs), as in the deployed suite; ``--no-traffic`` pauses it in the
manifest, so no inference competes with the install for the two cores.

Usage: ``.venv/bin/python bench/deploy_latency.py [--sizes 1,10,100] [--repeat 3] [--no-traffic]``.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "edge-device-1"
NAME = "digits"


def make_model(target_mb: float, seed: int) -> bytes:
    """A valid model with the runner's interface (input [N,64] -> label, probabilities) whose weights
    make it about ``target_mb`` MB: 64 -> hidden (ReLU) -> 10, random float32 weights."""
    from onnx import TensorProto, helper, numpy_helper

    hidden = max(16, int(target_mb * 1e6 / (4 * (64 + 10))))
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((64, hidden), dtype=np.float32) * 0.01, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 10), dtype=np.float32) * 0.01, "w2")
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("MatMul", ["hr", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "bench", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return bytes(model.SerializeToString())


def edb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edb.cli.main", *args], capture_output=True, text=True,
                          timeout=300, check=False)


@contextlib.contextmanager
def plain_http_server(directory: Path) -> Iterator[str]:
    """The baseline's unprotected file server: plain HTTP on a fresh loopback address."""
    from edb_local.net import free_loopback_address, free_port

    address = free_loopback_address()
    port = free_port(address)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((address, port), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{port}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def plain_azurite(directory: Path) -> Iterator[tuple[str, str]]:
    """The fair baseline's storage: Azurite (the stack's own emulator) over plain HTTP, no certificate.
    Yields (blob endpoint, connection string)."""
    from edb_local.azurite import ACCOUNT_KEY, ACCOUNT_NAME, azurite_blob_executable
    from edb_local.net import free_loopback_address, free_port

    address = free_loopback_address()
    port = free_port(address)
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(azurite_blob_executable()), "--blobHost", address, "--blobPort", str(port),
                             "--location", str(directory), "--skipApiVersionCheck", "--silent",
                             "--disableTelemetry"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import socket

        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the baseline's Azurite did not start")
            time.sleep(0.1)
        endpoint = f"http://{address}:{port}/{ACCOUNT_NAME}"
        yield endpoint, (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
                         f"BlobEndpoint={endpoint};")
    finally:
        proc.terminate()
        proc.wait(10)


def publish_plain(connection_string: str, model_path: Path) -> str:
    """Upload the plaintext model as an anonymous public-read blob; returns its URL (no SAS)."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(connection_string)
    with contextlib.suppress(ResourceExistsError):
        service.create_container("plain", public_access="blob")
    blob = service.get_blob_client("plain", model_path.name)
    with model_path.open("rb") as fh:
        blob.upload_blob(fh, overwrite=True, max_concurrency=2)
    service.close()
    return str(blob.url)


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
STAGES = ("patch_to_job", "download", "verify", "release", "install", "runner_load", "report")


def _log_times(path: Path, patterns: dict[str, str]) -> dict[str, float]:
    """Wall-clock times (epoch seconds) of the LAST log line matching each pattern."""
    found: dict[str, float] = {}
    if not path.exists():
        return found
    compiled = {key: re.compile(pattern) for key, pattern in patterns.items()}
    for line in path.read_text(errors="replace").splitlines():
        match = _LOG_TIME.match(line)
        if match is None:
            continue
        for key, pattern in compiled.items():
            if pattern.search(line):
                found[key] = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return found


def stage_times(state: Path, version: str, patched: float, seen: float) -> dict[str, float]:
    """Per-stage seconds of one rollout, from the installer's and runner's log lines."""
    v = re.escape(version)
    installer = _log_times(state / "logs" / "modules" / "package_installer.log", {
        "job": rf"install {NAME} {v} \(attempt", "downloading": rf"{NAME} {v}: downloading",
        "verifying": rf"{NAME} {v}: verifying", "releasing": rf"{NAME} {v}: releasing",
        "installing": rf"{NAME} {v}: installing", "installed": rf"installed {NAME} {v} "})
    runner = _log_times(state / "logs" / "modules" / "inference_runner.log", {"serving": rf"serving {NAME} {v} "})
    marks = {"patched": patched, **installer, **runner, "seen": seen}
    order = ["patched", "job", "verifying", "releasing", "installing", "installed", "serving", "seen"]
    if any(key not in marks for key in order):
        return {}
    values = [marks[key] for key in order]
    return {stage: round(max(0.0, b - a), 3) for stage, a, b in zip(STAGES, values[:-1], values[1:], strict=True)}


def plain_download_and_load(url: str) -> float:
    import requests

    from edb.ort import onnxruntime as ort

    started = time.perf_counter()
    data = requests.get(url, timeout=120).content
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    session.run(None, {"input": np.zeros((1, 64), dtype=np.float32)})
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100", help="model sizes in MB")
    parser.add_argument("--repeat", type=int, default=3, help="rollouts per size (the median is reported)")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    parser.add_argument("--no-traffic", action="store_true",
                        help="pause the simulated sensor, so no inference competes with the install")
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    load_before = os.getloadavg()

    sys.path.insert(0, str(ROOT))
    from edb.pki.devpki import init_publisher_pki
    from edb.schemas.common import iso_utc
    from edb_cloud.blob import publish_blob
    from edb_cloud.config import CloudConfig
    from edb_cloud.deploy import default_template, deploy_to_device, render_manifest
    from edb_cloud.iothub import HubService
    from edb_cloud.packaging import build_package
    from edb_cloud.publisher import ensure_release_policy, init_publisher, release_pins
    from edb_cloud.releases import Release
    from edb_cloud.rollout import rollout_to_device

    state = Path(tempfile.mkdtemp(prefix="edb-bench-", dir="/tmp"))
    results = []
    stack = contextlib.ExitStack()
    try:
        init_publisher_pki(state / "pki")
        up = edb("local", "up", "--state-dir", str(state), "--json")
        if up.returncode != 0:
            print(up.stdout[-2000:], up.stderr[-2000:], file=sys.stderr)
            return 1
        environ = {k: v for k, v in os.environ.items() if not k.startswith("EDB_")}
        config = CloudConfig.load(state, environ=environ)
        hub = HubService(config.iothub_connection_string, config.ca_cert)
        init_publisher(config)
        ensure_release_policy(config, NAME, devices=[DEVICE], device_classes=[], min_security_version=1,
                              pins=release_pins(config))  # the local TEE's measurement and svn
        manifest = render_manifest(config, default_template(), "amd64")
        if args.no_traffic:  # in the manifest: a deployment replaces the modules' desired properties
            manifest["modulesContent"]["simulated_sensor"]["properties.desired"]["enabled"] = False
        deploy_to_device(hub, DEVICE, manifest)

        def runner_serving() -> str | None:
            model = hub.module_twin(DEVICE, "inference_runner").reported.get("model") or {}
            return model.get("version") if model.get("state") == "serving" else None

        _, plain_connection = stack.enter_context(plain_azurite(state / "plain-azurite"))
        models = state / "models"
        models.mkdir()
        svn = 0
        for index, mb in enumerate(sizes):
            model = make_model(mb, index)
            model_path = models / f"model-{index}.onnx"
            model_path.write_bytes(model)
            plain_url = publish_plain(plain_connection, model_path)
            twin_times, plain_times, server_times, stages = [], [], [], []
            for attempt in range(args.repeat):
                svn += 1
                version = f"{index + 1}.{attempt}.0"
                package = state / "cloud" / f"{NAME}-{version}.cpk"
                build_package(config, model_path, package, package_id=NAME, version=version, security_version=svn,
                              devices=[DEVICE], device_classes=[])
                uploaded = publish_blob(package, name=NAME, version=version,
                                        connection_string=config.blob_connection_string,
                                        container=config.blob_container, connection_verify=config.connection_verify())
                release = Release(NAME, NAME, version, svn, uploaded.url, uploaded.sha256, uploaded.size,
                                  uploaded.blob, iso_utc())
                patched = time.time()
                started = time.perf_counter()
                rollout_to_device(hub, DEVICE, release)
                deadline = started + 300
                while runner_serving() != version:
                    if time.perf_counter() > deadline:
                        raise TimeoutError(f"{version} not serving after 300 s")
                    time.sleep(0.02)
                twin_times.append(time.perf_counter() - started)
                stages.append(stage_times(state, version, patched, patched + twin_times[-1]))
                plain_times.append(plain_download_and_load(plain_url))
                with plain_http_server(models) as base:
                    server_times.append(plain_download_and_load(f"{base}/{model_path.name}"))
                print(f"  {version}: twin -> serving {twin_times[-1]:.3f} s, plain {plain_times[-1]:.3f} s, "
                      f"stages {stages[-1]}", file=sys.stderr)
            twin_s = float(np.median(twin_times))
            plain_s = float(np.median(plain_times))
            server_s = float(np.median(server_times))
            complete = [s for s in stages if s]
            row = {"mb": round(len(model) / 1e6, 1), "package_mb": round(uploaded.size / 1e6, 1),
                   "twin_to_serving_s": round(twin_s, 3), "plain_download_load_s": round(plain_s, 3),
                   "ratio": round(twin_s / plain_s, 2),
                   "twin_runs_s": [round(t, 3) for t in twin_times], "plain_runs_s": [round(t, 3) for t in plain_times],
                   "plain_http_server_s": round(server_s, 3), "ratio_vs_http_server": round(twin_s / server_s, 2),
                   "stages_s": {k: round(float(np.median([s[k] for s in complete])), 3) for k in STAGES}
                   if complete else {}}
            results.append(row)
            print(f"{row['mb']:>7} MB: twin -> serving {twin_s:7.3f} s, plaintext download + load {plain_s:7.3f} s, "
                  f"ratio {row['ratio']} (vs http.server {server_s:.3f} s: {row['ratio_vs_http_server']})",
                  file=sys.stderr)
    finally:
        stack.close()
        if not args.keep:
            edb("local", "down", "--state-dir", str(state), "--json")
            shutil.rmtree(state, ignore_errors=True)
    print(json.dumps({"bench": "deploy_latency", "repeat": args.repeat, "traffic": not args.no_traffic,
                      "loadavg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)], "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
