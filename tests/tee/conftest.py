"""Fixtures for the TEE tests (helpers in tee_helpers.py)."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from tee_helpers import DEVICE, DEVICE_CLASS, Device, Package, Publisher, TeeProcess, mlp_model

from edb import onnx_layout
from edb.cpk import PackageIdentity, Target, build
from edb.pki.devpki import init_publisher_pki
from edb.tee import TeeClient
from edb_tee.config import AccessConfig, MeasuredConfig
from edb_tee.provisioning import provision

PackageFactory = Callable[..., Package]
DeviceFactory = Callable[..., Device]


@pytest.fixture(scope="session")
def publisher(tmp_path_factory: pytest.TempPathFactory) -> Publisher:
    pki = init_publisher_pki(tmp_path_factory.mktemp("pki") / "pki", kek_bits=2048)
    return Publisher(pki.load_kek(), pki.signer(), pki.trust_roots())


@pytest.fixture(scope="session")
def other_publisher(tmp_path_factory: pytest.TempPathFactory) -> Publisher:
    """A second publisher PKI, pinned on no device."""
    pki = init_publisher_pki(tmp_path_factory.mktemp("other-pki") / "pki", kek_bits=2048)
    return Publisher(pki.load_kek(), pki.signer(), pki.trust_roots())


@pytest.fixture
def make_package(tmp_path: Path, publisher: Publisher) -> PackageFactory:
    counter = iter(range(10_000))

    def make(model: bytes | None = None, *, package_id: str = "mlp", version: str = "1.0.0",
             security_version: int = 1, device_ids: tuple[str, ...] = (DEVICE,), device_classes: tuple[str, ...] = (),
             layout: bool = True, expires_in: dt.timedelta = dt.timedelta(days=1),
             directory: Path | None = None, signed_by: Publisher | None = None) -> Package:
        model = model if model is not None else mlp_model()
        by = signed_by or publisher
        payload = onnx_layout.convert(model) if layout else model
        now = dt.datetime.now(dt.UTC)
        ident = PackageIdentity(
            package_id=package_id, version=version, security_version=security_version,
            target=Target(device_ids=device_ids, device_classes=device_classes),
            created=now - dt.timedelta(minutes=5), expires=now + expires_in,
            media_type=onnx_layout.MEDIA_TYPE if layout else "application/onnx")
        directory = directory or tmp_path / "packages"
        directory.mkdir(exist_ok=True)
        out = directory / f"{package_id}-{version}-{next(counter)}.cpk"
        result = build(io.BytesIO(payload), out, identity=ident, kek=by.kek, signer=by.signer, chunk_size=64 * 1024)
        return Package(out, result, model, payload)

    return make


@pytest.fixture
def make_device(tmp_path: Path, publisher: Publisher) -> DeviceFactory:
    def make(device_id: str = DEVICE, *, access: AccessConfig | None = None, legacy: bool = False,
             state_dir: Path | None = None, roots: list[x509.Certificate] | None = None,
             measured: MeasuredConfig | None = None) -> Device:
        state = state_dir or tmp_path / "state"
        result = provision(state, device_id, device_class=DEVICE_CLASS,
                           publisher_roots=publisher.roots if roots is None else roots,
                           measured=measured or MeasuredConfig(legacy_v1=legacy), access=access)
        ca = x509.load_pem_x509_certificate(result.manufacturer_ca.read_bytes())
        return Device(state, result.layout, ca)

    return make


@pytest.fixture
def device(make_device: DeviceFactory) -> Device:
    return make_device()


@pytest.fixture
def tee(device: Device) -> Iterator[TeeProcess]:
    proc = TeeProcess(device).start()
    yield proc
    proc.stop()


@pytest.fixture
def client(tee: TeeProcess) -> Iterator[TeeClient]:
    c = tee.client()
    yield c
    c.close()
