"""Run real releases (and the legacy wrap) with every logger at DEBUG, then grep everything that
was logged or audited for the DEK and the legacy class key in hex, base64 and base64url forms."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.keyvault.secrets import SecretClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from kr_helpers import Manufacturer, Publisher, build_package, unique

from edb.attestation.keywrap import open_released_key
from edb.keyrelease import KeyReleaseClient
from edb.keys.azure_keyvault import KeyVaultKek
from edb_local.stack_ca import StackCA
from key_release_service.audit import AuditLog
from key_release_service.host import KeyReleaseHost
from key_release_service.legacy import legacy_secret_name


def secret_forms(secret: bytes) -> list[str]:
    std = base64.b64encode(secret).decode()
    url = base64.urlsafe_b64encode(secret).decode()
    forms = {secret.hex(), secret.hex().upper(), std, std.rstrip("="), url, url.rstrip("=")}
    # also any 16-character window of the encodings, in case a log line truncates
    for text in (std.rstrip("="), url.rstrip("="), secret.hex()):
        forms.update(text[i:i + 16] for i in range(0, len(text) - 16, 8))
    return sorted(forms)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_no_key_material_in_any_log(
    captured_logs: io.StringIO, capsys: pytest.CaptureFixture[str], make_service: Callable[..., Any],
    stack_ca: StackCA, loopback_address: str, tmp_path: Path, manufacturer: Manufacturer, kek: KeyVaultKek,
    publisher: Publisher, set_policy: Callable[..., Any], secret_client: SecretClient,
) -> None:
    audit_path = tmp_path / "audit.log"
    service = make_service(legacy_enabled=True, legacy_api_key="fn-key")
    service.audit = AuditLog.to_file(audit_path)
    creds = stack_ca.issue_server(f"kr-logs-{loopback_address}", ips=[loopback_address])
    host = KeyReleaseHost(service, address=loopback_address, port=0, cert=creds.cert_path, key=creds.key_path)
    await host.start()
    deks: list[bytes] = []
    try:
        pid = unique("logs")
        set_policy(pid)
        pkg, _ = build_package(kek, publisher, pid)
        client = KeyReleaseClient(host.url, ca_bundle=str(stack_ca.ca_path))
        for _ in range(3):
            device = manufacturer.device(unique("dev"))
            holder: dict[str, Any] = {}

            def tee(nonce: str, device: Any = device, holder: dict[str, Any] = holder) -> Any:
                evidence, holder["otk"] = device.evidence(nonce, pkg)
                return evidence

            jwe = await asyncio.to_thread(client.release, (pid, "1.0.0"), pkg.signed, tee)
            deks.append(open_released_key(jwe, holder["otk"], package_id=pid, version="1.0.0").dek)
        # a denial too, so error paths log as well
        stranger = Manufacturer("Stranger").device(unique("dev"))
        with pytest.raises(Exception, match="KR_CHAIN_UNTRUSTED"):
            await asyncio.to_thread(client.release, (pid, "1.0.0"), pkg.signed,
                                    lambda n: stranger.evidence(n, pkg)[0])
        # the legacy wrap of a class key
        name = unique("legacy")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)

        def legacy() -> bytes:
            ca = str(stack_ca.ca_path)
            requests.post(f"{host.url}/api/ProvisionKey/{name}?code=fn-key", verify=ca, timeout=10)
            r = requests.post(f"{host.url}/api/WrapKey?code=fn-key", verify=ca, timeout=10,
                              json={"key_name": name, "client_public_key": base64.b64encode(spki).decode()})
            return key.decrypt(base64.b64decode(r.json()["wrapped_key"]), padding.PKCS1v15())

        class_key = await asyncio.to_thread(legacy)
        assert class_key == base64.b64decode(secret_client.get_secret(legacy_secret_name(name)).value)
    finally:
        await host.stop()

    logs = captured_logs.getvalue()
    audit = audit_path.read_text()
    out = capsys.readouterr()
    everything = "\n".join([logs, audit, out.out, out.err])
    # the capture is real: it holds the stand-in's request lines and the audit decisions
    assert "unwrapkey" in logs and "azure" in logs
    assert len(audit.splitlines()) == 6 and audit.count('"KR_OK"') == 5 and "KR_CHAIN_UNTRUSTED" in audit
    assert len(set(deks)) == 1 and len(deks[0]) == 32
    for secret in (deks[0], class_key):
        for form in secret_forms(secret):
            assert form not in everything, "key material found in logs"
    for line in audit.splitlines():
        assert set(json.loads(line)) <= {"time", "event", "decision", "code", "device", "deviceClass",
                                         "deviceVerified", "package", "version", "securityVersion", "kid",
                                         "remote", "ms"}
