"""Provisioning (factory), the device certificate profile, the measurement, and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tee_helpers import START_BOUND_S, STOP_BOUND_S, Device, wait_until

from edb.errors import EdbError
from edb.pki.chain import verify_chain
from edb.pki.oids import DEVICE_ATTESTATION_EKU
from edb_tee.config import MeasuredConfig
from edb_tee.core import open_device_state
from edb_tee.measurement import measure
from edb_tee.paths import DeviceLayout
from edb_tee.provisioning import provision


def test_device_certificate_profile(device: Device) -> None:
    cert = x509.load_pem_x509_certificate(device.layout.certificate.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "trustbox-edge-201"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "EDB Simulated Manufacturer"
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [DEVICE_ATTESTATION_EKU] and ExtendedKeyUsageOID.CODE_SIGNING not in eku
    verify_chain(cert, [], [device.manufacturer_ca], now=dt.datetime.now(dt.UTC),
                 required_eku=DEVICE_ATTESTATION_EKU, require_digital_signature=True)
    assert (device.state_dir / "manufacturer" / "ca.pem").exists()


def test_private_keys_never_leave_unsealed(device: Device) -> None:
    """No file of the whole state directory holds the attestation or legacy private key."""
    state = open_device_state(device.layout)
    try:
        att = state.identity.attestation_key.private_numbers().private_value.to_bytes(32, "big")
        legacy = state.identity.legacy_key.private_numbers().d.to_bytes(256, "big")
        der = state.identity.attestation_key.private_bytes(serialization.Encoding.DER,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption())
    finally:
        state.close()
    for path in device.state_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (att, legacy[:64], der[-40:]):
                assert secret not in data, path


def test_provisioning_is_refused_twice_and_ids_are_checked(device: Device, publisher) -> None:
    with pytest.raises(EdbError) as err:
        provision(device.state_dir, "dev-1")
    assert err.value.code == "TEE_ALREADY_PROVISIONED"
    for bad in ("../x", "", "a b", "x" * 200):
        with pytest.raises(EdbError) as err:
            provision(device.state_dir, bad)
        assert err.value.code == "TEE_BAD_NAME"


def test_measurement_is_stable_and_covers_configuration(device: Device) -> None:
    first = open_device_state(device.layout)
    m1 = first.measurement
    first.close()
    second = open_device_state(device.layout)
    assert second.measurement == m1 == measure(MeasuredConfig())
    second.close()
    assert measure(MeasuredConfig(legacy_v1=True)) != m1
    assert measure(MeasuredConfig(tee_svn=2)) != m1


def test_cli_provision_measurement_and_info(tmp_path: Path, publisher) -> None:
    from edb.pki.devpki import init_publisher_pki

    state = tmp_path / "edb"
    init_publisher_pki(state / "pki", kek_bits=2048)
    run = [sys.executable, "-m", "edb.cli.main"]
    out = subprocess.run([*run, "device", "provision", "--device-id", "cli-dev", "--state-dir", str(state), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["deviceId"] == "cli-dev" and info["publisherRoots"] == 1
    device_dir = state / "devices" / "cli-dev"
    m = subprocess.run([*run, "tee", "measurement", "--device-dir", str(device_dir)], capture_output=True,
                       text=True, timeout=60)
    assert m.stdout.strip() == info["measurement"]
    again = subprocess.run([*run, "device", "provision", "--device-id", "cli-dev", "--state-dir", str(state)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "TEE_ALREADY_PROVISIONED" in again.stderr
    sock = tmp_path / "s.sock"
    proc = subprocess.Popen([*run, "tee", "serve", "--device-dir", str(device_dir), "--socket", str(sock)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: sock.exists() or proc.poll() is not None, "the service listens", START_BOUND_S)
        assert proc.poll() is None, "the service exited"
        shown = subprocess.run([*run, "tee", "info", "--socket", str(sock)], capture_output=True, text=True,
                               timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["device"]["measurement"] == info["measurement"]
    finally:
        proc.terminate()
        proc.wait(STOP_BOUND_S)
    assert not sock.exists()  # removed on shutdown


def test_cli_provision_pins_the_development_publisher_root(tmp_path: Path) -> None:
    state = tmp_path / "fresh"
    run = [sys.executable, "-m", "edb.cli.main", "device", "provision", "--state-dir", str(state), "--json"]
    out = subprocess.run([*run, "--device-id", "d1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["publisherRoots"] == 1 and (state / "pki" / "root.pem").exists()
    none = subprocess.run([*run, "--device-id", "d2", "--no-publisher-root"], capture_output=True, text=True,
                          timeout=120)
    assert json.loads(none.stdout)["publisherRoots"] == 0
    state_d2 = open_device_state(DeviceLayout.for_device(state, "d2"))
    assert state_d2.identity.publisher_roots == ()
    state_d2.close()
