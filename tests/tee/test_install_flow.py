"""Install, load and infer through the real TEE service, and the hostile inputs of the install path:
each is refused with its code and leaves the installed set, the floors and the serving model as
they were."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tee_helpers import Device, Publisher, TeeProcess, install, mlp_model, reference, release_key

from edb.attestation.keywrap import wrap_to_one_time_key
from edb.errors import EdbError
from edb.tee import TeeClient


def test_install_load_infer_matches_plain_onnxruntime(client: TeeClient, make_package, publisher: Publisher,
                                                       device: Device) -> None:
    pkg = make_package(security_version=2)
    summary = install(client, pkg, publisher, device)
    assert summary.package.version == "1.0.0" and summary.floor == 2 and summary.replaced_version is None
    assert summary.package.sha256 == __import__("hashlib").sha256(pkg.path.read_bytes()).hexdigest()
    [installed] = client.list_installed()
    assert (installed.name, installed.package_id, installed.security_version) == ("mlp", "mlp", 2)
    h = client.load_model("mlp")
    assert [i.name for i in h.inputs] == ["input"] and h.outputs[0].dtype == "float32"
    assert h.prepacked  # default: small models are prepacked (prepackMaxBytes), large ones load in place
    in_place = client.load_model("mlp", prepack=False)
    assert not in_place.prepacked
    x1 = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(client.infer(in_place, {"input": x1})["output"], reference(pkg.model, x1), rtol=1e-5)
    client.unload(in_place)
    x = np.random.default_rng(0).standard_normal((5, 64), dtype=np.float32)
    np.testing.assert_allclose(client.infer(h, {"input": x})["output"], reference(pkg.model, x), rtol=1e-5)
    # batching: many requests, one TEE call, results split back per request
    parts = client.infer_many(h, [{"input": x[:2]}, {"input": x[2:]}])
    np.testing.assert_allclose(np.concatenate([p["output"] for p in parts]), reference(pkg.model, x), rtol=1e-5)
    client.unload(h)


def test_plain_onnx_payload_is_converted_inside_the_tee(client: TeeClient, make_package, publisher: Publisher,
                                                          device: Device) -> None:
    pkg = make_package(layout=False)
    install(client, pkg, publisher, device)
    h = client.load_model("mlp", prepack=True)
    assert h.prepacked
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(client.infer(h, {"input": x})["output"], reference(pkg.model, x), rtol=1e-5)


def test_package_for_another_device_is_refused_before_any_key(client: TeeClient, make_package) -> None:
    pkg = make_package(device_ids=("someone-else",))
    with pytest.raises(EdbError) as err:
        client.begin_install("mlp", pkg.path)
    assert err.value.code == "CPK_WRONG_TARGET"
    assert client.list_installed() == []


def test_expired_and_unsigned_by_pinned_root_are_refused(client: TeeClient, make_package, other_publisher: Publisher,
                                                         tmp_path) -> None:
    with pytest.raises(EdbError) as err:
        client.begin_install("mlp", make_package(expires_in=dt.timedelta(seconds=-60)).path)
    assert err.value.code == "CPK_EXPIRED"
    # a valid package of a publisher whose root this device does not pin
    with pytest.raises(EdbError) as err:
        client.begin_install("mlp", make_package(signed_by=other_publisher).path)
    assert err.value.code == "CPK_UNTRUSTED_SIGNER"
    # signed by the pinned publisher, then a byte of the signed manifest changed (it still parses)
    pkg = make_package(version="1.0.0")
    data = pkg.path.read_bytes()
    assert data.count(b'"1.0.0"') == 1  # the manifest's version, nowhere else
    tampered = tmp_path / "tampered.cpk"
    tampered.write_bytes(data.replace(b'"1.0.0"', b'"1.0.9"'))
    with pytest.raises(EdbError) as err:
        client.begin_install("mlp", tampered)
    assert err.value.code == "CPK_SIGNATURE_INVALID"
    assert client.list_installed() == [] and client.status()["installs"] == 0


def test_device_without_a_pinned_publisher_root_refuses_v2_installs(make_device, make_package) -> None:
    dev = make_device(roots=[])
    proc = TeeProcess(dev).start()
    try:
        with proc.client() as c:
            with pytest.raises(EdbError) as err:
                c.begin_install("mlp", make_package().path)
            assert err.value.code == "TEE_NO_TRUST_ROOT"
            assert c.list_installed() == [] and c.status()["installs"] == 0
    finally:
        proc.stop()


def test_wrapped_key_for_another_one_time_key_is_refused(client: TeeClient, make_package, publisher: Publisher,
                                                         device: Device) -> None:
    good = make_package(version="1.0.0", security_version=1)
    install(client, good, publisher, device)
    h = client.load_model("mlp")
    pkg = make_package(version="2.0.0", security_version=2)
    ticket = client.begin_install("mlp", pkg.path)
    client.get_install_evidence(ticket, "nonce-1")
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    dek = publisher.kek.unwrap(pkg.result.manifest.wrapped_dek)
    jwe = wrap_to_one_time_key(dek, stranger, package_id="mlp", version="2.0.0", kid=pkg.result.manifest.kid)
    with pytest.raises(EdbError) as err:
        client.complete_install(ticket, jwe)
    assert err.value.code == "ATT_KEYWRAP_WRONG_KEY"
    # nothing changed: still version 1.0.0, floor 1, the loaded model still serves
    [installed] = client.list_installed()
    assert installed.version == "1.0.0"
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(client.infer(h, {"input": x})["output"], reference(good.model, x), rtol=1e-5)
    # the transaction is gone after a failed completion
    with pytest.raises(EdbError) as err:
        client.complete_install(ticket, jwe)
    assert err.value.code == "TEE_INSTALL_UNKNOWN"


def test_key_released_for_another_package_is_refused(client: TeeClient, make_package, publisher: Publisher,
                                                     device: Device) -> None:
    a = make_package(package_id="mlp", version="1.0.0")
    b = make_package(package_id="other", version="1.0.0")
    ticket = client.begin_install("mlp", a.path)
    ev = client.get_install_evidence(ticket, "nonce-2")
    jwe_for_b = release_key(ev, a, publisher, device.manufacturer_ca)  # right key, but rebind it to b:
    from edb.attestation.keywrap import load_public_jwk

    dek_b = publisher.kek.unwrap(b.result.manifest.wrapped_dek)
    jwe_for_b = wrap_to_one_time_key(dek_b, load_public_jwk(ev.one_time_jwk), package_id="other", version="1.0.0",
                                     kid=b.result.manifest.kid)
    with pytest.raises(EdbError) as err:
        client.complete_install(ticket, jwe_for_b)
    assert err.value.code == "ATT_KEYWRAP_BINDING"
    assert client.list_installed() == []


def test_rollback_below_floor_refused_also_after_restart(tee: TeeProcess, make_package, publisher: Publisher,
                                                          device: Device) -> None:
    client = tee.client()
    install(client, make_package(version="3.0.0", security_version=3), publisher, device)
    old = make_package(version="2.0.0", security_version=2)
    with pytest.raises(EdbError) as err:
        client.begin_install("mlp", old.path)
    assert err.value.code == "CPK_ROLLBACK"
    # also under another name: the floor belongs to the package id
    with pytest.raises(EdbError) as err:
        client.begin_install("elsewhere", old.path)
    assert err.value.code == "CPK_ROLLBACK"
    tee.restart()
    with pytest.raises(EdbError) as err:
        client.begin_install("mlp", old.path)
    assert err.value.code == "CPK_ROLLBACK"
    client.uninstall("mlp")  # uninstalling never lowers the floor
    with pytest.raises(EdbError) as err:
        client.begin_install("mlp", old.path)
    assert err.value.code == "CPK_ROLLBACK"
    client.close()


def test_floor_raised_by_a_concurrent_install_is_rechecked_at_completion(
        client: TeeClient, make_package, publisher: Publisher, device: Device) -> None:
    v2 = make_package(version="2.0.0", security_version=2)
    v3 = make_package(version="3.0.0", security_version=3)
    t2 = client.begin_install("mlp", v2.path)  # passes the floor check now (no floor yet)
    ev2 = client.get_install_evidence(t2, "n2")
    install(client, v3, publisher, device)  # a second transaction raises the floor of package id mlp to 3
    with pytest.raises(EdbError) as err:
        client.complete_install(t2, release_key(ev2, v2, publisher, device.manufacturer_ca))
    assert err.value.code == "CPK_ROLLBACK"
    assert [(p.name, p.version) for p in client.list_installed()] == [("mlp", "3.0.0")]


def test_hot_swap_serving_continues_while_the_next_version_installs(
        client: TeeClient, make_package, publisher: Publisher, device: Device) -> None:
    v1 = make_package(mlp_model(seed=1), version="1.0.0", security_version=1)
    v2 = make_package(mlp_model(seed=2), version="2.0.0", security_version=2)
    install(client, v1, publisher, device)
    h1 = client.load_model("mlp")
    summary = install(client, v2, publisher, device)
    assert summary.replaced_version == "1.0.0"
    x = np.ones((2, 64), np.float32)
    np.testing.assert_allclose(client.infer(h1, {"input": x})["output"], reference(v1.model, x), rtol=1e-5)
    h2 = client.load_model("mlp")
    assert h2.version == "2.0.0"
    np.testing.assert_allclose(client.infer(h2, {"input": x})["output"], reference(v2.model, x), rtol=1e-5)
    client.unload(h1)


def test_steps_out_of_order_and_foreign_transactions_are_refused(
        tee: TeeProcess, make_package, publisher: Publisher, device: Device) -> None:
    a, b = tee.client(), tee.client()
    pkg = make_package()
    ticket = a.begin_install("mlp", pkg.path)
    with pytest.raises(EdbError) as err:
        a.complete_install(ticket, "x.y.z.w.v")
    assert err.value.code == "TEE_INSTALL_STATE"
    # same process, other connection: allowed (transactions belong to the process)
    ticket = a.begin_install("mlp", pkg.path)
    assert b.get_install_evidence(ticket, "n").jws
    # another process cannot continue it
    import subprocess
    import sys

    code = (
        "import sys; from edb.tee import TeeClient; from edb.tee.types import InstallTicket; "
        "from edb.errors import EdbError\n"
        f"t = InstallTicket('{ticket.txn}', 'mlp', 'mlp', '1.0.0', 1, 'cpk-v2', None, '')\n"
        f"try:\n    TeeClient('{device.socket}').get_install_evidence(t, 'n')\n"
        "except EdbError as e:\n    print(e.code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "TEE_INSTALL_UNKNOWN", out.stderr
    a.abort_install(ticket)
    with pytest.raises(EdbError) as err:
        a.get_install_evidence(ticket, "n")
    assert err.value.code == "TEE_INSTALL_UNKNOWN"
    for bad in ("../etc", "UPPER", "", "a" * 65):
        with pytest.raises(EdbError) as err:
            a.begin_install(bad, pkg.path)
        assert err.value.code == "TEE_BAD_NAME"
    a.close()
    b.close()


def test_legacy_flow_is_off_by_default(client: TeeClient) -> None:
    with pytest.raises(EdbError) as err:
        client.legacy_public_key()
    assert err.value.code == "TEE_LEGACY_DISABLED"


def test_unknown_model_and_handles(client: TeeClient, make_package, publisher: Publisher, device: Device) -> None:
    with pytest.raises(EdbError) as err:
        client.load_model("nothing")
    assert err.value.code == "TEE_NOT_INSTALLED"
    install(client, make_package(), publisher, device)
    h = client.load_model("mlp")
    with pytest.raises(EdbError) as err:
        client.infer(h, {"nope": np.ones((1, 64), np.float32)})
    assert err.value.code == "TEE_INPUT_INVALID"
    with pytest.raises(EdbError) as err:
        client.infer(h, {"input": np.ones((1, 3), np.float32)})
    assert err.value.code == "TEE_INPUT_INVALID"
    client.unload(h)
    with pytest.raises(EdbError) as err:
        client.infer(h, {"input": np.ones((1, 64), np.float32)})
    assert err.value.code == "TEE_UNKNOWN_HANDLE"


def _v1_package(path, model: bytes, key: bytes, cp_id: str = "0b7a3c1e-6f1f-4a59-9e0e-3c7f1b2d4e5a"):  # type: ignore[no-untyped-def]
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    from edb.cpk.v1 import V1Signing, build_v1

    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demo")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(signer.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(signer, hashes.SHA256()))
    build_v1(model, path, cp_id=cp_id, key=key, signing=V1Signing(signer, cert), version=(1, 2, 3))
    return cp_id


def test_legacy_v1_package_with_the_original_key_flow(make_device, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import base64
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    dev = make_device(legacy=True)
    proc = TeeProcess(dev).start()
    try:
        c = proc.client()
        assert c.device_info().legacy_v1
        model, key = mlp_model(seed=7), os.urandom(32)
        cp_id = _v1_package(tmp_path / "legacy.cpk", model, key)
        name = cp_id.lower()  # the name a package installs under is its signed id (v1: the cp-id)
        ticket = c.begin_install(name, tmp_path / "legacy.cpk")
        assert ticket.legacy and ticket.signed_manifest is None and ticket.package_id == cp_id
        with pytest.raises(EdbError) as err:  # no attestation for v1
            c.get_install_evidence(ticket, "n")
        assert err.value.code == "TEE_INSTALL_STATE"
        ticket = c.begin_install(name, tmp_path / "legacy.cpk")
        # what the original wrap endpoint does: RSA PKCS#1 v1.5 to the device's (legacy) public key
        pub = serialization.load_der_public_key(c.legacy_public_key())
        wrapped = base64.b64encode(pub.encrypt(key, padding.PKCS1v15())).decode()  # type: ignore[union-attr]
        summary = c.complete_install_legacy(ticket, wrapped)
        assert (summary.package.format, summary.package.version) == ("cpk-v1", "1.2.3")
        h = c.load_model(name)
        x = np.ones((1, 64), np.float32)
        np.testing.assert_allclose(c.infer(h, {"input": x})["output"], reference(model, x), rtol=1e-5)
        # a wrong content key: the GCM tag fails, the installed version stays
        other = c.begin_install(name, tmp_path / "legacy.cpk")
        bad = base64.b64encode(pub.encrypt(os.urandom(32), padding.PKCS1v15())).decode()  # type: ignore[union-attr]
        with pytest.raises(EdbError) as err:
            c.complete_install_legacy(other, bad)
        assert err.value.code.startswith("CPK_")
        assert [p.name for p in c.list_installed()] == [name]
        c.close()
    finally:
        proc.stop()


def test_v1_package_refused_when_legacy_is_off(client: TeeClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    _v1_package(tmp_path / "legacy.cpk", mlp_model(), os.urandom(32))
    with pytest.raises(EdbError) as err:
        client.begin_install("legacy", tmp_path / "legacy.cpk")
    assert err.value.code == "TEE_LEGACY_DISABLED"


def test_corrupted_payload_is_refused_before_any_key_release(client: TeeClient, make_package, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pkg = make_package()
    data = bytearray(pkg.path.read_bytes())
    data[16 + 4 * 16 + 100] ^= 0x40  # inside stream 0, the payload ciphertext
    bad = tmp_path / "corrupt.cpk"
    bad.write_bytes(bytes(data))
    with pytest.raises(EdbError) as err:
        client.begin_install("mlp", bad)
    assert err.value.code == "CPK_DIGEST_MISMATCH"
    assert client.status()["installs"] == 0 and client.list_installed() == []


def test_payload_changed_after_begin_is_refused_at_completion_and_changes_nothing(  # type: ignore[no-untyped-def]
        client: TeeClient, make_package, publisher: Publisher, device: Device) -> None:
    """The file stays the caller's between begin and complete; complete authenticates every byte it
    decrypts (chunk tags, signed plaintext digest), and the model sealed while it was decrypted is
    discarded: the serving version and its sealed object stay as they were."""
    v1 = make_package(mlp_model(seed=1), version="1.0.0", security_version=1)
    install(client, v1, publisher, device)
    objects = device.layout.objects
    before = sorted(p.name for p in objects.rglob("*"))
    v2 = make_package(mlp_model(dim=512, seed=2), version="2.0.0", security_version=2)  # 2 MiB: 32 chunks
    assert v2.result.manifest.plaintext_size > 2 * 1024 * 1024  # more than one sealed chunk before the bad one
    ticket = client.begin_install("mlp", v2.path)  # the whole file verifies
    evidence = client.get_install_evidence(ticket, "n-changed")
    data = bytearray(v2.path.read_bytes())
    data[16 + 4 * 16 + 30 * (64 * 1024 + 16) + 100] ^= 0x40  # then the payload's 31st chunk changes
    with open(v2.path, "r+b") as fh:  # in place: the TEE holds the same file open
        fh.write(bytes(data))
    with pytest.raises(EdbError) as err:
        client.complete_install(ticket, release_key(evidence, v2, publisher, device.manufacturer_ca))
    assert err.value.code == "CPK_TAG_MISMATCH"
    assert [(p.name, p.version) for p in client.list_installed()] == [("mlp", "1.0.0")]
    assert sorted(p.name for p in objects.rglob("*")) == before  # no half-written sealed file left behind
    assert client.status()["installs"] == 0
    h = client.load_model("mlp")
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(client.infer(h, {"input": x})["output"], reference(v1.model, x), rtol=1e-5)
