"""Helpers for the TEE tests: small ONNX models, packages built with the package library, devices,
the TEE service as a real child process, and a stand-in for the key release decision (verify the
evidence, unwrap with the KEK, wrap to the one-time key)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography import x509
from onnx import TensorProto, helper, numpy_helper

from edb.attestation.evidence import public_key_hash, verify_evidence
from edb.attestation.keywrap import load_public_jwk, wrap_to_one_time_key
from edb.cpk import BuildResult
from edb.keys.local import LocalKek, LocalSigner
from edb.tee import TeeClient
from edb.tee.types import Evidence
from edb_tee.paths import DeviceLayout

DEVICE = "dev-1"
DEVICE_CLASS = "trustbox-edge-201"

#: Bounds for waiting on an event (a socket appearing, a process exiting, a background removal).
#: They are never timing assertions: each wait ends as soon as the event happens, and the bound
#: only turns a hang into a failure. Sized for a loaded 2-core machine, within pytest's 300 s.
START_BOUND_S = 120
STOP_BOUND_S = 60
EVENT_BOUND_S = 60


def wait_until(condition: Callable[[], bool], what: str, bound_s: float = EVENT_BOUND_S) -> None:
    """Poll ``condition`` until it holds; fail (AssertionError naming ``what``) after ``bound_s``."""
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {bound_s} s"
        time.sleep(0.02)


@dataclass
class Publisher:
    kek: LocalKek
    signer: LocalSigner
    roots: list[x509.Certificate]


# ------------------------------------------------------------------------------------ models


def mlp_model(dim: int = 64, layers: int = 2, seed: int = 1) -> bytes:
    """An MLP (MatMul+Relu) with random float32 weights: every 64-byte window is high-entropy."""
    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "input"
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((dim, dim), dtype=np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        out = "output" if i == layers - 1 else f"r{i}"
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, dim])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def reference(model: bytes, x: np.ndarray) -> np.ndarray:
    from edb.ort import onnxruntime as ort

    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


# ---------------------------------------------------------------------------------- packages


@dataclass
class Package:
    path: Path
    result: BuildResult
    model: bytes  # the ONNX model (before any layout conversion)
    payload: bytes  # the plaintext inside the package

    @property
    def package_id(self) -> str:
        return self.result.manifest.package_id

    @property
    def version(self) -> str:
        return self.result.manifest.version


def release_key(evidence: Evidence, package: Package, publisher: Publisher, manufacturer_ca: x509.Certificate) -> str:
    """What the key release service decides, minus policy: chain, signature, binding, then re-wrap."""
    leaf = x509.load_der_x509_certificate(base64.b64decode(evidence.cert_chain[0]))
    leaf.verify_directly_issued_by(manufacturer_ca)
    claims = verify_evidence(evidence.jws, leaf.public_key())  # type: ignore[arg-type]
    otk = load_public_jwk(evidence.one_time_jwk)
    assert claims.one_time_key_hash == public_key_hash(otk)
    assert claims.package is not None and claims.package.manifest_sha256 == package.result.signed.manifest_sha256
    dek = publisher.kek.unwrap(package.result.manifest.wrapped_dek)
    return wrap_to_one_time_key(dek, otk, package_id=package.package_id, version=package.version,
                                kid=package.result.manifest.kid)


# ----------------------------------------------------------------------------------- devices


@dataclass
class Device:
    state_dir: Path
    layout: DeviceLayout
    manufacturer_ca: x509.Certificate

    @property
    def socket(self) -> Path:
        return self.layout.socket


class TeeProcess:
    """``python -m edb_tee serve`` as a child process."""

    def __init__(self, device: Device, env: dict[str, str] | None = None) -> None:
        self.device = device
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = device.layout.root.parent / f"{device.layout.root.name}-tee.log"

    def start(self) -> TeeProcess:
        logf = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edb_tee", "serve", "--device-dir", str(self.device.layout.root)],
            stdout=logf, stderr=logf, env=self.env)
        logf.close()
        deadline = time.monotonic() + START_BOUND_S
        while not self.device.socket.exists():  # bound under a temporary name, renamed once listening
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"TEE did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> TeeProcess:
        self.stop()
        return self.start()

    def client(self, **kwargs: object) -> TeeClient:
        return TeeClient(self.device.socket, **kwargs)  # type: ignore[arg-type]


def install(client: TeeClient, package: Package, publisher: Publisher, device: Device, name: str = "mlp") -> object:
    ticket = client.begin_install(name, package.path)
    evidence = client.get_install_evidence(ticket, "n-" + os.urandom(8).hex())
    return client.complete_install(ticket, release_key(evidence, package, publisher, device.manufacturer_ca))
