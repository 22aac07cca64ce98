"""One provisioned device, one TEE process and one client for the whole corpus module: the models are
packaged and installed once (module-scoped fixtures), so the corpus run stays short."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tee"))  # tee_helpers

from cryptography import x509
from tee_helpers import DEVICE, DEVICE_CLASS, Device, Publisher, TeeProcess

from edb.pki.devpki import init_publisher_pki
from edb.tee import TeeClient
from edb_tee.config import MeasuredConfig
from edb_tee.provisioning import provision


@pytest.fixture(scope="module")
def corpus_publisher(tmp_path_factory: pytest.TempPathFactory) -> Publisher:
    pki = init_publisher_pki(tmp_path_factory.mktemp("corpus-pki") / "pki", kek_bits=2048)
    return Publisher(pki.load_kek(), pki.signer(), pki.trust_roots())


@pytest.fixture(scope="module")
def corpus_device(tmp_path_factory: pytest.TempPathFactory, corpus_publisher: Publisher) -> Device:
    state = tmp_path_factory.mktemp("corpus-device") / "state"
    result = provision(state, DEVICE, device_class=DEVICE_CLASS, publisher_roots=corpus_publisher.roots,
                       measured=MeasuredConfig())
    return Device(state, result.layout, x509.load_pem_x509_certificate(result.manufacturer_ca.read_bytes()))


@pytest.fixture(scope="module")
def corpus_tee(corpus_device: Device) -> Iterator[TeeProcess]:
    proc = TeeProcess(corpus_device).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def corpus_client(corpus_tee: TeeProcess) -> Iterator[TeeClient]:
    client = corpus_tee.client()
    yield client
    client.close()
