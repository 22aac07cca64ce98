"""SAS token parsing and verification as pure functions (edb_local.hub.sas), the hub's
authentication decisions; the clock is a parameter. Found unpinned by `make mutate`."""

from __future__ import annotations

import base64
import urllib.parse

import pytest

from edb_local.hub.errors import HubError
from edb_local.hub.sas import make_token, parse_token, sign, verify_token

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER = base64.b64encode(bytes(32)).decode()
RES = "Hub.azure-devices.net/devices/dev-1/modules/m"


def code(call: object) -> str:
    with pytest.raises(HubError) as exc:
        call()  # type: ignore[operator]
    return exc.value.code


def test_round_trip_with_both_sdk_encodings_and_a_key_name() -> None:
    for plus in (False, True):
        token = parse_token(make_token(RES, KEY, expiry=2000, key_name="iothub owner", quote_plus=plus))
        assert token.resource == RES and token.expiry == 2000 and token.key_name == "iothub owner"
        assert token.signature == sign(token.resource_raw, 2000, KEY)
        verify_token(token, expected_resources=[RES], keys=[OTHER, KEY], now=1999)
    assert parse_token(make_token(RES, KEY, expiry=5)).key_name is None


@pytest.mark.parametrize("text", [
    "", "SharedAccessSignature", "sharedaccesssignature sr=a&sig=b&se=1", "SharedAccessSignature sr=a&sig=b",
    "SharedAccessSignature sr=a&se=1", "SharedAccessSignature sig=b&se=1", "SharedAccessSignature sr=a&sr=a&sig=b&se=1",
    "SharedAccessSignature sr=a&sig=b&se=1&x=2", "SharedAccessSignature sr=a&sig&se=1",
    "SharedAccessSignature sr=a&sig=%%%&se=1", "SharedAccessSignature sr=a&sig=" + "A" * 44 + "&se=soon",
    "SharedAccessSignature sr=a&sig=" + base64.b64encode(bytes(31)).decode() + "&se=1",
    "SharedAccessSignature sr=a&sig=" + base64.b64encode(bytes(33)).decode() + "&se=1",
    "SharedAccessSignature sr=" + "a" * 4100 + "&sig=b&se=1",
])
def test_malformed_tokens(text: str) -> None:
    assert code(lambda: parse_token(text)) == "HUB_AUTH_BAD_TOKEN"


def test_exactly_4096_characters_is_still_parsed() -> None:
    token = make_token(RES, KEY, expiry=7)
    padded = token.replace("sr=", "sr=" + "x" * (4096 - len(token)), 1)
    assert len(padded) == 4096
    assert parse_token(padded).expiry == 7


def test_verification_decisions() -> None:
    token = parse_token(make_token(RES, KEY, expiry=1000))
    assert code(lambda: verify_token(token, expected_resources=[RES], keys=[OTHER], now=1)) == \
        "HUB_AUTH_BAD_SIGNATURE"
    assert code(lambda: verify_token(token, expected_resources=[RES], keys=[], now=1)) == "HUB_AUTH_BAD_SIGNATURE"
    assert code(lambda: verify_token(token, expected_resources=[RES], keys=["not base64!"], now=1)) == \
        "HUB_AUTH_BAD_SIGNATURE"
    assert code(lambda: verify_token(token, expected_resources=[RES + "x"], keys=[KEY], now=1)) == \
        "HUB_AUTH_WRONG_RESOURCE"
    assert code(lambda: verify_token(token, expected_resources=[RES.replace("dev-1", "DEV-1")], keys=[KEY],
                                     now=1)) == "HUB_AUTH_WRONG_RESOURCE"  # ids are case-sensitive
    verify_token(token, expected_resources=[RES.replace("Hub.azure", "hub.AZURE")], keys=[KEY], now=1)  # host not
    verify_token(token, expected_resources=[RES], keys=[KEY], now=999)
    assert code(lambda: verify_token(token, expected_resources=[RES], keys=[KEY], now=1000)) == \
        "HUB_AUTH_TOKEN_EXPIRED"  # at the expiry second
    forged = parse_token(make_token(RES, KEY, expiry=1000).replace("se=1000", "se=9999"))
    assert code(lambda: verify_token(forged, expected_resources=[RES], keys=[KEY], now=1)) == \
        "HUB_AUTH_BAD_SIGNATURE"  # the expiry is signed
    raw = urllib.parse.quote(RES, safe="")
    assert sign(raw, 1, KEY) != sign(raw, 2, KEY) != sign(raw, 1, OTHER)


def test_parsing_edges_found_by_mutation() -> None:
    token = make_token(RES, KEY, expiry=7)
    over = token.replace("sr=", "sr=" + "x" * (4097 - len(token)), 1)
    assert len(over) == 4097 and code(lambda: parse_token(over)) == "HUB_AUTH_BAD_TOKEN"
    sig = base64.b64encode(sign(urllib.parse.quote(RES, safe=""), 7, KEY)).decode()
    raw_padding = f"SharedAccessSignature sr={urllib.parse.quote(RES, safe='')}&sig={sig}&se=7"
    assert sig.endswith("=") and parse_token(raw_padding).expiry == 7  # '=' left unencoded in sig
    dirty = raw_padding.replace(f"sig={sig}", f"sig={sig[:10]}*{sig[10:]}")
    assert code(lambda: parse_token(dirty)) == "HUB_AUTH_BAD_TOKEN"  # strict base64


def test_key_list_edges_found_by_mutation() -> None:
    token = parse_token(make_token(RES, KEY, expiry=1000))
    verify_token(token, expected_resources=[RES], keys=[KEY, OTHER], now=1)  # a later key does not undo a match
    verify_token(token, expected_resources=[RES], keys=["not base64!", KEY], now=1)  # a bad key is skipped
    dirty_key = KEY[:8] + "*" + KEY[8:]  # decodes to KEY only if non-alphabet characters were dropped
    assert code(lambda: verify_token(token, expected_resources=[RES], keys=[dirty_key], now=1)) == \
        "HUB_AUTH_BAD_SIGNATURE"
