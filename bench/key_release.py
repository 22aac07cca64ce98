"""Benchmark: key release round trip against the local stack's Key Vault stand-in and key release
service (both started here as subprocesses on a fresh loopback address, over HTTPS).

Measures, in one run:
- sequential full releases with the device client (edb.keyrelease): nonce + evidence (one-time key
  generation and ES256 signing, as the TEE does) + release (chain, signature, nonce, manifest,
  policy read from Key Vault, Key Vault unwrapKey, JWE to the one-time key): p50/p95/p99;
- 8 concurrent clients (threads), releases per second;
- baseline: the bare Key Vault stand-in unwrapKey round trip with the real CryptographyClient.

The service's spent nonces are in Azurite's Table service (HTTPS, started here too), as in the local
stack and a scaled-out deployment; ``BENCH_NONCE_STORE=memory`` measures the in-memory store instead.

The last line of output is one JSON object.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
from azure.keyvault.secrets import SecretClient
from cryptography.hazmat.primitives.asymmetric import ec

from edb.attestation.evidence import EvidenceClaims, PackageBinding, public_key_hash, sign_evidence
from edb.attestation.keywrap import open_released_key, public_jwk
from edb.cpk import PackageIdentity, Target, build
from edb.keyrelease import KeyReleaseClient, PackageRef
from edb.keys.azure_keyvault import KeyVaultKek
from edb.keys.local import LocalSigner
from edb.pki.certs import to_der, to_pem
from edb.pki.issue import issue_leaf, make_name, make_root_ca
from edb.pki.oids import DEVICE_ATTESTATION_EKU, PUBLISHER_SIGNING_EKU
from edb_local.azurite import azurite_table_command, table_connection_string
from edb_local.keyvault import CredentialFile
from edb_local.net import free_loopback_address, free_port
from edb_local.stack_ca import StackCA
from key_release_service.policy import CONTENT_TYPE, build_policy, policy_secret_name

SEQUENTIAL = int(os.environ.get("BENCH_SEQUENTIAL", "300"))
CONCURRENT_CLIENTS = 8
PER_CLIENT = int(os.environ.get("BENCH_PER_CLIENT", "40"))
BASELINE = int(os.environ.get("BENCH_BASELINE", "300"))
WARMUP = 20
NONCE_STORE = os.environ.get("BENCH_NONCE_STORE", "table")
MEASUREMENT = "ab" * 32


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def start_tables(address: str, ca: StackCA, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """azurite-table over HTTPS with the stack CA; its connection string once it listens."""
    import socket

    port = free_port(address)
    tls = ca.issue_server("azurite", ips=[address])
    (work / "tables").mkdir()
    proc = subprocess.Popen(azurite_table_command(address=address, port=port, location=work / "tables",
                                                  cert=tls.cert_path, key=tls.key_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return proc, table_connection_string(address, port)
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("azurite-table did not start")


def start(cmd: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"{cmd[2]} did not start; see {log}")
    return proc, json.loads(line)


class Device:
    def __init__(self, ca_key: ec.EllipticCurvePrivateKey, ca_cert: Any, device_id: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        cert = issue_leaf(ca_key, ca_cert, self.key.public_key(), make_name(device_id, "Bench Mfr", "bench-class"),
                          ekus=[DEVICE_ATTESTATION_EKU])
        self.device_id = device_id
        self.chain = (base64.b64encode(to_der(cert)).decode(),)


class Evidence:
    def __init__(self, jws: str, chain: tuple[str, ...], jwk: dict[str, str]) -> None:
        self.jws, self.cert_chain, self.one_time_jwk = jws, chain, jwk


def tee_for(device: Device, result: Any, otks: list[ec.EllipticCurvePrivateKey]) -> Any:
    m = result.manifest
    binding = PackageBinding(m.package_id, m.version, m.security_version, result.signed.manifest_sha256)

    def make(nonce: str) -> Evidence:
        otk = ec.generate_private_key(ec.SECP256R1())
        otks.append(otk)
        claims = EvidenceClaims(device_id=device.device_id, issued_at=int(time.time()), nonce=nonce,
                                tee_measurement=MEASUREMENT, tee_svn=3,
                                one_time_key_hash=public_key_hash(otk.public_key()), package=binding)
        return Evidence(sign_evidence(claims, device.key), device.chain, public_jwk(otk.public_key()))

    return make


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="edb-bench-kr-"))
    ca = StackCA.load_or_create(work / "ca")
    address = free_loopback_address()
    kv_tls = ca.issue_server("keyvault", ips=[address])
    kr_tls = ca.issue_server("keyrelease", ips=[address])
    base_env = dict(os.environ)
    procs: list[subprocess.Popen[Any]] = []
    try:
        store_env: dict[str, str] = {"EDB_KR_NONCE_STORE": "memory"}
        if NONCE_STORE == "table":
            tables, connection_string = start_tables(address, ca, work)
            procs.append(tables)
            store_env = {"EDB_KR_NONCE_STORE": connection_string, "EDB_KR_NONCE_STORE_CA": str(ca.ca_path)}
        kv, kv_ready = start([sys.executable, "-m", "edb_local.keyvault", "serve", "--state-dir", str(work / "kv"),
                              "--address", address, "--port", "0", "--cert", str(kv_tls.cert_path),
                              "--key", str(kv_tls.key_path), "--ca", str(ca.ca_path)], base_env, work / "kv.log")
        procs.append(kv)
        vault_url = kv_ready["url"]
        sdk = {"verify_challenge_resource": False, "connection_verify": str(ca.ca_path)}
        admin = CredentialFile.load(kv_ready["credentials"]["admin"]).client_secret_credential()
        KeyClient(vault_url, admin, **sdk).create_rsa_key("edb-kek", size=3072,
                                                          key_operations=["wrapKey", "unwrapKey"])
        # publisher, manufacturer, package, policy
        now = dt.datetime.now(dt.UTC)
        pub_root_key = ec.generate_private_key(ec.SECP256R1())
        pub_root = make_root_ca(pub_root_key, make_name("Bench Publisher Root"))
        pub_key = ec.generate_private_key(ec.SECP256R1())
        pub_leaf = issue_leaf(pub_root_key, pub_root, pub_key.public_key(), make_name("Bench Publisher"),
                              ekus=[PUBLISHER_SIGNING_EKU])
        mfr_key = ec.generate_private_key(ec.SECP256R1())
        mfr_root = make_root_ca(mfr_key, make_name("Bench Manufacturer Root"))
        (work / "manufacturer.pem").write_bytes(to_pem([mfr_root]))
        (work / "publisher.pem").write_bytes(to_pem([pub_root]))
        kek = KeyVaultKek(f"{vault_url}/keys/edb-kek", admin, **sdk)
        result = build(io.BytesIO(os.urandom(4096)), io.BytesIO(), kek=kek, signer=LocalSigner(pub_key, [pub_leaf]),
                       chunk_size=1024, identity=PackageIdentity(
                           package_id="bench-model", version="1.0.0", security_version=1,
                           target=Target(device_classes=("bench-class",)), created=now - dt.timedelta(minutes=1),
                           expires=now + dt.timedelta(days=1)))
        policy = build_policy("bench-model", device_classes=["bench-class"], measurements=[MEASUREMENT])
        SecretClient(vault_url, admin, **sdk).set_secret(policy_secret_name("bench-model"), policy.dumps(),
                                                         content_type=CONTENT_TYPE)

        kr_env = dict(base_env, EDB_KEYVAULT_URL=vault_url, EDB_KEYVAULT_CA=str(ca.ca_path),
                      EDB_KEYVAULT_CREDENTIAL=kv_ready["credentials"]["key-release"],
                      EDB_KR_MANUFACTURER_ROOTS=str(work / "manufacturer.pem"),
                      EDB_KR_PUBLISHER_ROOTS=str(work / "publisher.pem"), EDB_KR_KEK_NAMES="edb-kek",
                      EDB_KR_RATE_BURST="1000000", EDB_KR_RATE_PER_MINUTE="1000000",
                      EDB_KR_NONCE_RATE_BURST="1000000", EDB_KR_NONCE_RATE_PER_MINUTE="1000000",
                      EDB_KR_NONCE_KEY_FILE=str(work / "nonce.key"), EDB_KR_AUDIT_LOG=str(work / "audit.log"),
                      **store_env)
        kr, kr_ready = start([sys.executable, "-m", "key_release_service", "serve", "--address", address,
                              "--port", "0", "--cert", str(kr_tls.cert_path), "--key", str(kr_tls.key_path)],
                             kr_env, work / "keyrelease.log")
        procs.append(kr)
        service_url = kr_ready["url"]
        devices = [Device(mfr_key, mfr_root, f"bench-dev-{i}") for i in range(CONCURRENT_CLIENTS)]
        ref = PackageRef("bench-model", "1.0.0")

        # -- sequential ------------------------------------------------------------------------
        client = KeyReleaseClient(service_url, ca_bundle=str(ca.ca_path))
        otks: list[ec.EllipticCurvePrivateKey] = []
        tee = tee_for(devices[0], result, otks)
        for _ in range(WARMUP):
            client.release(ref, result.signed, tee)
        seq: list[float] = []
        for _ in range(SEQUENTIAL):
            t0 = time.perf_counter()
            jwe = client.release(ref, result.signed, tee)
            seq.append((time.perf_counter() - t0) * 1000)
        dek = open_released_key(jwe, otks[-1], package_id="bench-model", version="1.0.0").dek  # sanity: it opens
        assert len(dek) == 32

        # -- 8 concurrent clients ----------------------------------------------------------------
        errors: list[BaseException] = []
        barrier = threading.Barrier(CONCURRENT_CLIENTS + 1)

        def worker(device: Device) -> None:
            c = KeyReleaseClient(service_url, ca_bundle=str(ca.ca_path))
            t = tee_for(device, result, [])
            c.release(ref, result.signed, t)  # connection warm-up
            barrier.wait()
            try:
                for _ in range(PER_CLIENT):
                    c.release(ref, result.signed, t)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(d,)) for d in devices]
        for th in threads:
            th.start()
        barrier.wait()
        t0 = time.perf_counter()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
        if errors:
            raise SystemExit(f"concurrent releases failed: {errors[0]}")
        per_s = CONCURRENT_CLIENTS * PER_CLIENT / wall

        # -- baseline: bare stand-in unwrapKey round trip ------------------------------------------
        release_cred = CredentialFile.load(kv_ready["credentials"]["key-release"]).client_secret_credential()
        crypto = CryptographyClient(result.manifest.kid, release_cred, **sdk)
        wrapped = result.manifest.wrapped_dek.value
        for _ in range(WARMUP):
            crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped)
        base: list[float] = []
        for _ in range(BASELINE):
            t0 = time.perf_counter()
            crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped)
            base.append((time.perf_counter() - t0) * 1000)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    p50, p95, p99 = percentile(seq, 50), percentile(seq, 95), percentile(seq, 99)
    base_p50 = statistics.median(base)
    print(f"sequential full release ({SEQUENTIAL}): p50 {p50:.2f} ms  p95 {p95:.2f} ms  p99 {p99:.2f} ms")
    print(f"{CONCURRENT_CLIENTS} concurrent clients x {PER_CLIENT}: {per_s:.1f} releases/s")
    print(f"baseline stand-in unwrapKey ({BASELINE}): p50 {base_p50:.2f} ms  p95 {percentile(base, 95):.2f} ms")
    print(json.dumps({
        "p50_ms": round(p50, 2), "p95_ms": round(p95, 2), "p99_ms": round(p99, 2),
        "concurrent_releases_per_s": round(per_s, 1), "concurrent_clients": CONCURRENT_CLIENTS,
        "baseline_unwrap_p50_ms": round(base_p50, 2), "ratio_p50_to_unwrap": round(p50 / base_p50, 2),
        "sequential_n": SEQUENTIAL, "target_p50_ms": 50, "target_met": p50 <= 50, "nonce_store": NONCE_STORE,
    }))


if __name__ == "__main__":
    main()
