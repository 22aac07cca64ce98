"""The start-up integrity decision (edb_tee.integrity.check_state), tested directly (no I/O), and the
sealed headers that feed it (SecureStorage.scan on real files).

A sealed object's header records ``ctr`` (the store's write counter its commit produces) and the
floors that commit raises. Against the replay-protected record they prove: ``ctr >= counter + 2``
-> the record is older than that object (TEE_STATE_ROLLED_BACK); ``ctr == counter + 1`` -> a
commit the record lacks: a crash between seal and commit (one exact shape, kept as uncommitted) or
a replay by that one commit (any other shape: TEE_STATE_ROLLED_BACK); floors -> at least what any
authentic object proves."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from edb.errors import EdbError
from edb.tee.commands import DEVICE_TA, INSTALLER_TA
from edb_tee.integrity import SealedFile, Verdict, check_state, object_key, object_slot
from edb_tee.keys import KeyHierarchy, new_huk
from edb_tee.rpmb import ReplayProtectedStore, RpmbState
from edb_tee.sealed import PREFIX, SealedHeader
from edb_tee.storage import SecureStorage

TA = INSTALLER_TA


def header(name: str, gen: int, ctr: int, floors: dict[str, int] | None = None, ta: uuid.UUID = TA) -> SealedHeader:
    return SealedHeader(ta, name, gen, 100, 1024, b"\0" * PREFIX, ctr, tuple(sorted((floors or {}).items())))


def placed(name: str, gen: int, ctr: int, floors: dict[str, int] | None = None, *, sha: str = "",
           ta: uuid.UUID = TA) -> SealedFile:
    """A file in its own slot, as SecureStorage writes it."""
    return SealedFile(f"{ta}/{object_slot(name)}.{gen}.sobj", ta, object_slot(name), gen,
                      header(name, gen, ctr, floors, ta), sha or f"sha-{name}-{gen}")


def store(counter: int, objects: dict[str, int] | None = None, floors: dict[str, int] | None = None) -> RpmbState:
    """A record listing ``name -> current generation`` (header hashes as placed() makes them)."""
    listed = {object_key(TA, n): {"gen": g, "hdr": f"sha-{n}-{g}"} for n, g in (objects or {}).items()}
    return RpmbState(counter, listed, dict(floors or {}), {})


def rolled_back(state: RpmbState, files: list[SealedFile]) -> str:
    with pytest.raises(EdbError) as err:
        check_state(state, files)
    return err.value.code


def test_an_honest_state_passes_unchanged() -> None:
    # identity at 1, model a gen 1 at 2, a gen 2 at 3 (gen 1 still there: its removal was pending), b at 4
    files = [placed("identity", 1, 1, ta=DEVICE_TA), placed("model/a", 1, 2, {"a": 2}),
             placed("model/a", 2, 3, {"a": 3}), placed("model/b", 1, 4, {"b": 1})]
    state = RpmbState(4, {object_key(DEVICE_TA, "identity"): {"gen": 1, "hdr": "sha-identity-1"},
                          object_key(TA, "model/a"): {"gen": 2, "hdr": "sha-model/a-2"},
                          object_key(TA, "model/b"): {"gen": 1, "hdr": "sha-model/b-1"}},
                      {"a": 3, "b": 1}, {})
    assert check_state(state, files) == Verdict()
    # after an uninstall of b (commit 5 deleted it) and restarts: still nothing to say
    del state.objects[object_key(TA, "model/b")]
    state.counter = 5
    assert check_state(state, files[:3]) == Verdict()


def test_an_object_two_or_more_writes_newer_than_the_record_is_refused() -> None:
    state = store(3, {"model/a": 1}, {"a": 2})
    for ctr in (5, 9):
        assert rolled_back(state, [placed("model/a", 1, 2, {"a": 2}), placed("model/b", 1, ctr)]) == \
            "TEE_STATE_ROLLED_BACK"
    # even a copy moved out of its slot proves the store once reached ctr - 1
    moved = SealedFile("elsewhere", TA, object_slot("model/z"), 7, header("model/b", 1, 5), "x")
    assert rolled_back(state, [moved]) == "TEE_STATE_ROLLED_BACK"


def test_a_crash_between_seal_and_commit_is_uncommitted_and_its_floor_kept() -> None:
    # first install of a name: generation 1, nothing recorded for it
    pending = placed("model/a", 1, 4, {"a": 3})
    verdict = check_state(store(3, {}, {"x": 1}), [pending])
    assert verdict.uncommitted == (pending.path,)
    assert verdict.raise_floors == {"a": 3}
    # replacing generation 2: the current generation is still in place
    current, pending = placed("model/a", 2, 3, {"a": 2}), placed("model/a", 3, 4, {"a": 5})
    verdict = check_state(store(3, {"model/a": 2}, {"a": 2}), [current, pending])
    assert verdict == Verdict({"a": 5}, (pending.path,), ())
    # a floor it does not raise is not reported
    assert check_state(store(3, {"model/a": 2}, {"a": 7}), [current, pending]).raise_floors == {}


def test_a_one_commit_replay_over_a_replacement_is_refused() -> None:
    # the commit of generation 3 happened (generation 2 was removed after it), then the record was replayed
    assert rolled_back(store(3, {"model/a": 2}, {"a": 2}), [placed("model/a", 3, 4, {"a": 5})]) == \
        "TEE_STATE_ROLLED_BACK"
    # the current generation present but not the recorded one (another copy put there)
    wrong = placed("model/a", 2, 3, {"a": 2}, sha="other")
    assert rolled_back(store(3, {"model/a": 2}), [wrong, placed("model/a", 3, 4)]) == "TEE_STATE_ROLLED_BACK"


def test_shapes_a_crash_cannot_leave_are_refused() -> None:
    state = store(3, {"model/a": 1})
    current = placed("model/a", 1, 2)
    # a generation that skips one
    assert rolled_back(state, [current, placed("model/a", 3, 4)]) == "TEE_STATE_ROLLED_BACK"
    # a first write that is not generation 1
    assert rolled_back(state, [current, placed("model/b", 2, 4)]) == "TEE_STATE_ROLLED_BACK"
    # an authentic file out of its slot (renamed)
    moved = SealedFile("x", TA, object_slot("model/b"), 2, header("model/b", 1, 4), "x")
    assert rolled_back(state, [current, moved]) == "TEE_STATE_ROLLED_BACK"
    # the same, recorded as current already (a record at this counter cannot list it)
    assert rolled_back(store(3, {"model/a": 2}), [placed("model/a", 2, 4)]) == "TEE_STATE_ROLLED_BACK"


def test_files_that_do_not_authenticate_prove_nothing() -> None:
    junk = SealedFile("junk", TA, object_slot("model/a"), 9, None)
    assert check_state(store(1, {}), [junk]) == Verdict()


def test_floors_come_from_every_authentic_object_and_missing_objects_are_reported() -> None:
    state = store(5, {"model/a": 2, "model/b": 1}, {"a": 2})
    files = [placed("model/a", 2, 3, {"a": 2}),
             placed("model/c", 1, 4, {"c": 6})]  # not current (a leftover the sweep removes)
    verdict = check_state(state, files)
    assert verdict.raise_floors == {"c": 6}
    assert verdict.unaccounted == (object_key(TA, "model/b"),)
    assert verdict.uncommitted == ()


def test_v1_headers_prove_nothing() -> None:
    assert check_state(store(0, {}), [placed("model/a", 1, 0)]) == Verdict()


# --- the headers as SecureStorage writes and scans them ----------------------------------------------


def test_storage_records_the_counter_and_floors_and_scan_reads_them(tmp_path: Path) -> None:
    keys = KeyHierarchy(new_huk(), "dev-1")
    (tmp_path / "objects").mkdir()
    rpmb = ReplayProtectedStore.create(tmp_path / "rpmb.json", keys.rpmb_key)
    st = SecureStorage(tmp_path / "objects", keys, rpmb)
    st.write(DEVICE_TA, "identity", b"i" * 10)
    st.write(TA, "model/a", b"a" * 5000, also=lambda s: s.floors.__setitem__("a", 3), floors={"a": 3})
    st.write(TA, "model/a", b"A" * 5000, also=lambda s: s.floors.__setitem__("a", 4), floors={"a": 4})
    (tmp_path / "objects" / str(TA) / "not-an-object").write_bytes(b"x")
    scanned = {(f.header.name, f.header.gen): f for f in st.scan() if f.header is not None}
    assert sorted(scanned) == [("identity", 1), ("model/a", 2)]  # generation 1 was removed after the commit
    assert scanned["identity", 1].header.ctr == 1  # type: ignore[union-attr]
    a = scanned["model/a", 2].header
    assert a is not None and a.ctr == 3 == rpmb.counter and a.floors == (("a", 4),)
    assert all(f.in_place for f in scanned.values())
    assert check_state(rpmb.read(), st.scan()) == Verdict()
    # a file that does not authenticate is listed without a header
    current = st._path(TA, "model/a", 2)
    data = bytearray(current.read_bytes())
    data[20] ^= 1
    current.write_bytes(bytes(data))
    assert [f.header for f in st.scan() if f.path == str(current)] == [None]
