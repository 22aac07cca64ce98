"""Fuzzing the installer's desired-property parser (edb.schemas.parse_desired_packages): twin
documents around a valid entry, with hostile names, values, types and sizes. It never raises; every
entry it returns is either a fully valid package or an INSTALL_* error under a twin-safe key."""

from __future__ import annotations

from typing import Any

from fuzz_settings import FUZZ
from hypothesis import given
from hypothesis import strategies as st

from edb.schemas.packages import (
    NAME_PATTERN,
    SHA256_PATTERN,
    VERSION_PATTERN,
    DesiredPackage,
    InvalidDesired,
    check_url,
    parse_desired_packages,
)

MAX = 10 * 1024 * 1024
VALID = {"version": "1.0.0", "url": "https://127.0.0.1:10000/devstore/models/m.cpk", "sha256": "ab" * 32,
         "size": 1234}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
hostile_text = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["../x", "a/b", "file:///etc/passwd", "file://host/x", "https://", "https://h:0/x",
                     "https://user:pw@h/x", "https://h/x#f", "http://h/x", "file:relative", "A" * 3000,
                     "https://h/\x00", "https://[::1/x", "1.0.0\n", "ab" * 32 + "\n", "AB" * 32]))
field_values = st.one_of(json_values, hostile_text, st.integers(-1, MAX + 2))


@st.composite
def entries(draw: st.DrawFn) -> Any:
    entry: dict[str, Any] = dict(VALID)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*VALID, "extra", "Version", "$url"]))
        if draw(st.booleans()):
            entry[key] = draw(field_values)
        else:
            entry.pop(key, None)
    return draw(st.one_of(st.just(entry), json_values))


names = st.one_of(st.sampled_from(["model", "digits-2", "a" * 64, "a" * 65, "Model", "-x", "", "../up", "$v"]),
                  st.text(max_size=70))
documents = st.one_of(
    st.builds(lambda packages, extra: {"$version": 3, "packages": packages, **extra},
              st.dictionaries(names, entries(), max_size=4), st.dictionaries(st.text(max_size=8), json_values,
                                                                              max_size=2)),
    st.builds(lambda section: {"packages": section}, json_values),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
)


@FUZZ
@given(documents)
def test_parser_never_raises_and_returns_only_checked_entries(doc: dict[str, Any]) -> None:
    result = parse_desired_packages(doc, max_size=MAX)
    for key, entry in result.items():
        assert key == "_section" or NAME_PATTERN.fullmatch(key) or key.startswith("invalid-")
        assert len(key) <= 64
        if isinstance(entry, DesiredPackage):
            assert entry.name == key and NAME_PATTERN.fullmatch(entry.name)
            assert VERSION_PATTERN.fullmatch(entry.version) and SHA256_PATTERN.fullmatch(entry.sha256)
            assert isinstance(entry.size, int) and not isinstance(entry.size, bool) and 0 < entry.size <= MAX
            check_url(entry.url)  # raises if the URL is not one the installer may fetch
            assert doc["packages"][key] == {"version": entry.version, "url": entry.url,
                                            "sha256": entry.sha256, "size": entry.size}
        else:
            assert isinstance(entry, InvalidDesired)
            assert entry.error.code.startswith("INSTALL_"), entry.error.code


def test_the_valid_entry_parses() -> None:
    """The fuzzer's seed is itself accepted (so damage, not the seed, is what gets refused)."""
    assert isinstance(parse_desired_packages({"packages": {"model": VALID}}, max_size=MAX)["model"], DesiredPackage)
