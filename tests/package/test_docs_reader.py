"""The independent reader printed in docs/cpk-v2.md reads what the library writes (and refuses tampering)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from cpk_helpers import CHUNK, NOW, BuildFn, Publisher

from edb.pki.chain import verify_chain
from edb.pki.oids import PUBLISHER_SIGNING_EKU

DOC = Path(__file__).resolve().parents[2] / "docs" / "cpk-v2.md"


def doc_reader() -> Any:
    text = DOC.read_text()
    section = text[text.index("## An independent reader") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace["read_v2"]


@pytest.mark.parametrize("size", [0, CHUNK, 3 * CHUNK + 7])
def test_doc_reader_decrypts_library_packages(make_package: BuildFn, publisher: Publisher, size: int) -> None:
    read_v2 = doc_reader()
    path, _, plaintext = make_package(os.urandom(size))
    kek_private = publisher.kek._private

    def chain_check(certs: list[Any]) -> None:
        verify_chain(certs[0], certs[1:], publisher.roots, now=NOW, required_eku=PUBLISHER_SIGNING_EKU)

    assert read_v2(path.read_bytes(), kek_private, chain_check) == plaintext
    tampered = bytearray(path.read_bytes())
    tampered[90] ^= 1
    with pytest.raises(Exception):  # noqa: B017 - any failure of the bare sketch
        read_v2(bytes(tampered), kek_private, chain_check)
