"""The TEE's peer-credential allow-list decisions as pure functions (edb_tee.access): who holds which
role, and which role may open which trusted app. The process-level tests (test_roles.py) run the
TEE in a subprocess; these pin the decisions themselves (found unpinned by `make mutate`)."""

from __future__ import annotations

from edb.tee.transport import PeerCredentials
from edb_tee.access import SINGLE_UID_NOTE, describe, may_open, roles_of, summary
from edb_tee.config import AccessConfig, Role

SPLIT = AccessConfig(roles={"installer": Role(uids=frozenset({1001})), "runner": Role(gids=frozenset({2002})),
                            "admin": Role(uids=frozenset({0}))}, socket_gid=3003)


def peer(uid: int, gid: int) -> PeerCredentials:
    return PeerCredentials(pid=1, uid=uid, gid=gid)


def test_roles_by_uid_or_primary_gid_only() -> None:
    assert roles_of(peer(1001, 5), SPLIT) == {"installer"}
    assert roles_of(peer(7, 2002), SPLIT) == {"runner"}
    assert roles_of(peer(1001, 2002), SPLIT) == {"installer", "runner"}
    assert roles_of(peer(0, 0), SPLIT) == {"admin"}
    assert roles_of(peer(2002, 1001), SPLIT) == frozenset()  # a uid is not a gid, nor the reverse
    assert roles_of(peer(4242, 4242), SPLIT) == frozenset()


def test_which_role_opens_which_trusted_app() -> None:
    assert may_open(frozenset({"installer"}), "installer", SPLIT)
    assert not may_open(frozenset({"installer"}), "runner", SPLIT)
    assert may_open(frozenset({"runner"}), "runner", SPLIT)
    assert not may_open(frozenset({"runner"}), "installer", SPLIT)
    for role in ("installer", "runner", "admin"):
        assert may_open(frozenset({role}), "device", SPLIT)
    assert not may_open(frozenset(), "device", SPLIT)
    assert not may_open(frozenset({"admin"}), "installer", SPLIT)
    assert not may_open(frozenset({"installer", "runner", "admin"}), "no-such-ta", SPLIT)
    narrowed = AccessConfig(roles=SPLIT.roles, tas={"device": ("admin",), "installer": ("installer",),
                                                    "runner": ("runner",)})
    assert not may_open(frozenset({"runner"}), "device", narrowed)


def test_describe_and_summary_say_whether_roles_are_split() -> None:
    single = AccessConfig(roles={name: Role(uids=frozenset({1000})) for name in ("installer", "runner", "admin")})
    d = describe(single)
    assert d["mode"] == "single-uid" and d["note"] == SINGLE_UID_NOTE and d["socket"] == "0600 (owner only)"
    assert "single uid 1000" in summary(single)
    d = describe(SPLIT)
    assert d["mode"] == "per-role" and "note" not in d
    assert d["roles"]["runner"] == {"uids": [], "gids": [2002]} and d["socket"] == "0660, group 3003"
    assert d["trustedApps"]["installer"] == ["installer"]
    assert summary(SPLIT) == ("allow-list: per-role: admin uids=[0] gids=[]; installer uids=[1001] gids=[]; "
                              "runner uids=[] gids=[2002]; socket 0660 group 3003")
    owner_only = AccessConfig(roles=SPLIT.roles)
    assert summary(owner_only).endswith("runner uids=[] gids=[2002]; socket 0600")
