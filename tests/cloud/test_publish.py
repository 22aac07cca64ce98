"""`edb cloud publish` against a real Azurite over TLS: upload, SAS URL, read-only access."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import requests

from edb_cloud.blob import publish_blob
from edb_local.stack_ca import StackCA


def test_publish_uploads_content_addressed_and_returns_a_read_only_sas_url(
        azurite: str, stack_ca: StackCA, tmp_path: Path) -> None:
    package = tmp_path / "digits.cpk"
    data = os.urandom(300_000)
    package.write_bytes(data)
    seen: list[int] = []
    uploaded = publish_blob(package, name="digits", version="1.0.0", connection_string=azurite,
                            container="packages", connection_verify=str(stack_ca.ca_path),
                            progress=lambda current, total: seen.append(current))
    digest = hashlib.sha256(data).hexdigest()
    assert uploaded.sha256 == digest and uploaded.size == len(data)
    assert uploaded.blob == f"digits/1.0.0/{digest}.cpk"
    assert uploaded.url.startswith("https://") and "sig=" in uploaded.url and "sp=r" in uploaded.url
    assert seen and seen[-1] == len(data)

    fetched = requests.get(uploaded.url, verify=str(stack_ca.ca_path), timeout=10)
    assert fetched.status_code == 200 and fetched.content == data
    # the SAS grants read only
    denied = requests.put(uploaded.url, data=b"x", headers={"x-ms-blob-type": "BlockBlob"},
                          verify=str(stack_ca.ca_path), timeout=10)
    assert denied.status_code == 403
    # a range request works (the installer resumes downloads with it)
    part = requests.get(uploaded.url, headers={"Range": "bytes=1000-"}, verify=str(stack_ca.ca_path), timeout=10)
    assert part.status_code == 206 and part.content == data[1000:]
