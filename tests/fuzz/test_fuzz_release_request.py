"""Fuzzing the key release request parser (key_release_service.request.parse_release_request): a
well-formed request with members replaced, removed, added or retyped, its JSON text damaged, and
arbitrary bytes. The parser returns a request whose every member is within its bound, or refuses
with KR_MALFORMED_REQUEST (400) / KR_REQUEST_TOO_LARGE (413): never another exception."""

from __future__ import annotations

import base64
import json
from typing import Any

from fuzz_settings import FUZZ
from hypothesis import given
from hypothesis import strategies as st

from key_release_service import codes
from key_release_service.codes import Denied
from key_release_service.request import (
    MAX_CHAIN,
    MAX_EVIDENCE_CHARS,
    MAX_ID_CHARS,
    ReleaseRequest,
    parse_release_request,
)

B64 = base64.b64encode(b"\x30\x82\x01\x00" + bytes(64)).decode()
VALID: dict[str, Any] = {
    "evidence": "eyJhbGciOiJFUzI1NiJ9.eyJ4IjoxfQ.c2ln",
    "certChain": [B64, B64],
    "oneTimeKey": {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "BBBB"},
    "package": {"id": "digits", "version": "1.0.0"},
    "manifest": {"json": base64.b64encode(b'{"a":1}').decode(), "signature": base64.b64encode(bytes(70)).decode(),
                 "chain": [B64]},
}
PATHS = [("evidence",), ("certChain",), ("oneTimeKey",), ("package",), ("manifest",), ("package", "id"),
         ("package", "version"), ("manifest", "json"), ("manifest", "signature"), ("manifest", "chain"),
         ("oneTimeKey", "kty")]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
    | st.sampled_from(["", "=", "AAAA", "A" * 5, "A" * (MAX_EVIDENCE_CHARS + 1), "!!!!", B64 + "\n"]),
    lambda inner: st.lists(inner, max_size=MAX_CHAIN + 1) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10)
edits = st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from(["set", "delete", "extra"]), json_values),
                 max_size=3)


def _edit(edit_list: list[tuple[tuple[str, ...], str, Any]]) -> dict[str, Any]:
    doc = json.loads(json.dumps(VALID))
    for path, action, value in edit_list:
        parent = doc
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        if action == "set":
            parent[path[-1]] = value
        elif action == "delete":
            parent.pop(path[-1], None)
        else:
            parent["x-" + path[-1]] = value
    return doc


def _check(body: bytes) -> ReleaseRequest | None:
    try:
        request = parse_release_request(body)
    except Denied as exc:
        assert (exc.code, exc.status) in {(codes.MALFORMED_REQUEST, 400), (codes.REQUEST_TOO_LARGE, 413)}, exc.code
        return None
    assert 0 < len(request.evidence) <= MAX_EVIDENCE_CHARS
    assert 0 < len(request.package_id) <= MAX_ID_CHARS and 0 < len(request.package_version) <= MAX_ID_CHARS
    assert 0 < len(request.cert_chain_der) <= MAX_CHAIN and 0 < len(request.manifest.chain_der) <= MAX_CHAIN
    assert all(isinstance(v, str) for v in request.one_time_key.values())
    return request


@FUZZ
@given(edits)
def test_edited_requests(edit_list: list[tuple[tuple[str, ...], str, Any]]) -> None:
    doc = _edit(edit_list)
    request = _check(json.dumps(doc).encode())
    if request is not None:  # accepted: exactly the members sent, nothing invented
        assert request.package_id == doc["package"]["id"] and request.evidence == doc["evidence"]


@FUZZ
@given(st.integers(0, 10**6), st.binary(min_size=1, max_size=3), st.sampled_from(["replace", "insert", "cut"]))
def test_damaged_json_text(where: int, data: bytes, how: str) -> None:
    text = bytearray(json.dumps(VALID).encode())
    at = where % len(text)
    if how == "replace":
        text[at:at + len(data)] = data
    elif how == "insert":
        text[at:at] = data
    else:
        del text[at:]
    _check(bytes(text))


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


def test_the_valid_request_parses() -> None:
    assert _check(json.dumps(VALID).encode()) is not None
