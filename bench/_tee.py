"""The benches' TEE plumbing: a throwaway publisher and device, the TEE service as a child process, and
the install flow with the key release done in the bench (the local KEK plays the key release service).

Shared by bench/inference_overhead.py, bench/model_load.py and bench/tee_call_breakdown.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from edb import onnx_layout
from edb.attestation.keywrap import load_public_jwk, wrap_to_one_time_key
from edb.cpk import ManifestV2, PackageIdentity, Target, build
from edb.keys.local import LocalKek, LocalSigner
from edb.pki.devpki import init_publisher_pki
from edb.tee import TeeClient
from edb_tee.provisioning import ProvisionResult, provision

DEVICE_ID = "bench-dev"
VERSION = "1.0.0"


@dataclass(frozen=True)
class BenchDevice:
    """A provisioned TEE device and the publisher whose packages it trusts."""

    kek: LocalKek
    signer: LocalSigner
    info: ProvisionResult
    manufacturer_ca: x509.Certificate  # what the install evidence's certificate must be issued by


def provision_device(pki_dir: Path, state_dir: Path) -> BenchDevice:
    pki = init_publisher_pki(pki_dir, kek_bits=2048)
    kek, signer = pki.load_kek(), pki.signer()
    info = provision(state_dir, DEVICE_ID, publisher_roots=pki.trust_roots())
    ca = x509.load_pem_x509_certificate(info.manufacturer_ca.read_bytes())
    return BenchDevice(kek, signer, info, ca)


def start_tee(device_dir: Path, socket: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python -m edb_tee serve`` for ``device_dir``, returned once its socket exists (the log's tail
    is raised if it exits before)."""
    with open(log, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "edb_tee", "serve", "--device-dir", str(device_dir)],
                                stdout=logf, stderr=logf)
    while not socket.exists():
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
        time.sleep(0.01)
    return proc


def package_identity(package_id: str) -> PackageIdentity:
    """Version 1.0.0 of an aligned ONNX package for the bench device, valid from a minute ago for a day."""
    now = dt.datetime.now(dt.UTC)
    return PackageIdentity(package_id=package_id, version=VERSION, security_version=1,
                           target=Target(device_ids=(DEVICE_ID,)), created=now - dt.timedelta(minutes=1),
                           expires=now + dt.timedelta(days=1), media_type=onnx_layout.MEDIA_TYPE)


def install_released(tee: TeeClient, device: BenchDevice, name: str, package: Path, manifest: ManifestV2,
                     package_id: str) -> None:
    """begin_install -> evidence (its certificate checked against the manufacturer CA) -> the DEK
    unwrapped with the KEK and wrapped to the TEE's one-time key -> complete_install."""
    ticket = tee.begin_install(name, package)
    ev = tee.get_install_evidence(ticket, "bench")
    x509.load_der_x509_certificate(base64.b64decode(ev.cert_chain[0])).verify_directly_issued_by(
        device.manufacturer_ca)
    jwe = wrap_to_one_time_key(device.kek.unwrap(manifest.wrapped_dek), load_public_jwk(ev.one_time_jwk),
                               package_id=package_id, version=VERSION, kid=manifest.kid)
    tee.complete_install(ticket, jwe)


def build_and_install(tee: TeeClient, device: BenchDevice, name: str, model: bytes, work: Path) -> None:
    """``model`` packaged as ``work/<name>.cpk`` (package id ``name``) and installed under ``name``."""
    package = work / f"{name}.cpk"
    built = build(io.BytesIO(onnx_layout.convert(model)), package, identity=package_identity(name),
                  kek=device.kek, signer=device.signer)
    install_released(tee, device, name, package, built.manifest, name)
