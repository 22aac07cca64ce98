"""TEE configuration (``<device>/tee/config.json``): a measured part and an access part.

- ``measured``: what changes the TEE's behaviour towards packages and keys (security version,
  whether the weaker v1 key flow is enabled, limits). It is part of the TEE measurement, so the key
  release policy pins it along with the code.
- ``access``: the peer-credential allow-list. Which uids/gids hold which role (installer, runner,
  admin), which roles may open a session to which trusted app, and optionally the group the socket
  is shared with. It is per-device deployment data (the uids the modules run as), so it is not
  measured; it lives in the TEE-only directory (0700), changed only while the service is stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edb.errors import TeeError
from edb.tee.errors import CONFIG_INVALID
from edb_tee.paths import write_private

GIB = 1024 * 1024 * 1024
#: The caller roles. installer: install/uninstall packages; runner: load models and infer; admin:
#: the device trusted app only (identity, status, installed list, evidence), for operators.
ROLES = ("installer", "runner", "admin")
TA_ROLES_DEFAULT = {"device": ("installer", "runner", "admin"), "installer": ("installer",), "runner": ("runner",)}
MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel: never a valid owner


def _bad(why: str) -> TeeError:
    return TeeError(f"TEE configuration invalid: {why}", code=CONFIG_INVALID)


@dataclass(frozen=True)
class MeasuredConfig:
    tee_svn: int = 1
    legacy_v1: bool = False
    max_model_bytes: int = 4 * GIB
    max_frame_bytes: int = 64 * 1024 * 1024
    max_connections: int = 64
    install_ttl_s: int = 900
    #: models up to this many bytes are prepacked by default (speed); larger ones load in place (memory)
    prepack_max_bytes: int = 64 * 1024 * 1024
    #: a frame must arrive whole this many seconds after its first byte; a reply the peer does not
    #: read for this long drops the connection (edb_tee.server)
    frame_deadline_s: int = 10
    #: bytes of frames being received across all connections (edb_tee.quotas.frame_memory_quota)
    max_pending_frame_bytes: int = 256 * 1024 * 1024

    def to_json(self) -> dict[str, Any]:
        return {"teeSvn": self.tee_svn, "legacyV1": self.legacy_v1, "maxModelBytes": self.max_model_bytes,
                "maxFrameBytes": self.max_frame_bytes, "maxConnections": self.max_connections,
                "installTtlSeconds": self.install_ttl_s, "prepackMaxBytes": self.prepack_max_bytes,
                "frameDeadlineSeconds": self.frame_deadline_s, "maxPendingFrameBytes": self.max_pending_frame_bytes}

    @classmethod
    def from_json(cls, d: object) -> MeasuredConfig:
        keys = {"teeSvn", "legacyV1", "maxModelBytes", "maxFrameBytes", "maxConnections", "installTtlSeconds"}
        if isinstance(d, dict) and "prepackMaxBytes" not in d:  # devices provisioned before it existed
            d = {**d, "prepackMaxBytes": cls.prepack_max_bytes}
        keys.add("prepackMaxBytes")
        later = {"frameDeadlineSeconds": cls.frame_deadline_s, "maxPendingFrameBytes": cls.max_pending_frame_bytes}
        if isinstance(d, dict):  # devices provisioned before these existed get the defaults
            d = {**later, **d}
        keys |= set(later)
        if not isinstance(d, dict) or set(d) != keys:
            raise _bad(f"measured section must have exactly {sorted(keys)}")
        ints = [d[k] for k in keys - {"legacyV1"}]
        if not isinstance(d["legacyV1"], bool) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                          for i in ints):
            raise _bad("measured values have the wrong types")
        if not 4096 <= d["maxFrameBytes"] <= 1 << 30 or d["maxConnections"] < 1:
            raise _bad("frame or connection limit out of range")
        if d["frameDeadlineSeconds"] < 1 or d["maxPendingFrameBytes"] < 2 * d["maxFrameBytes"]:
            raise _bad("frame deadline below 1 s, or pending frame memory below two frames")
        return cls(d["teeSvn"], d["legacyV1"], d["maxModelBytes"], d["maxFrameBytes"], d["maxConnections"],
                   d["installTtlSeconds"], d["prepackMaxBytes"], d["frameDeadlineSeconds"], d["maxPendingFrameBytes"])


@dataclass(frozen=True)
class Role:
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()


def _valid_id(i: object) -> bool:
    return isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_ID


@dataclass(frozen=True)
class AccessConfig:
    """The allow-list. Every role in :data:`ROLES` is always defined (possibly held by nobody).

    ``socket_gid``: None keeps the socket 0600 (owner only: every role must be the TEE's own uid or
    root); a gid makes it 0660 owned by that group, so modules running as other uids in that group
    can reach it. Reaching the socket is not access: SO_PEERCRED against the roles still decides.
    """

    roles: dict[str, Role] = field(default_factory=dict)
    tas: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(TA_ROLES_DEFAULT))
    socket_gid: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", {**{name: Role() for name in ROLES}, **self.roles})
        if self.socket_gid is not None and not _valid_id(self.socket_gid):
            raise _bad("socket gid must be a non-negative integer")
        for name, role in self.roles.items():
            if not all(_valid_id(i) for i in (*role.uids, *role.gids)):
                raise _bad(f"role {name!r}: uids and gids must be integers in 0..{MAX_ID}")

    @classmethod
    def single_user(cls, uid: int) -> AccessConfig:
        """Development default: every role held by the user who provisioned the device."""
        return cls({name: Role(frozenset({uid})) for name in ROLES})

    @classmethod
    def per_role(cls, roles: dict[str, Role], *, socket_gid: int | None = None) -> AccessConfig:
        """Each role held by the uids/gids given for it; a role not given is held by nobody."""
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise _bad(f"unknown role(s) {sorted(unknown)}; roles are {list(ROLES)}")
        return cls(dict(roles), socket_gid=socket_gid)

    def single_uid(self) -> int | None:
        """The uid when one uid alone holds every role and no gid holds any (the development
        default), else None."""
        ids = {(frozenset(r.uids), frozenset(r.gids)) for r in self.roles.values()}
        if len(ids) != 1:
            return None
        uids, gids = next(iter(ids))
        return next(iter(uids)) if len(uids) == 1 and not gids else None

    def to_json(self) -> dict[str, Any]:
        return {"roles": {n: {"uids": sorted(r.uids), "gids": sorted(r.gids)} for n, r in sorted(self.roles.items())},
                "tas": {n: list(r) for n, r in sorted(self.tas.items())}, "socketGid": self.socket_gid}

    @classmethod
    def from_json(cls, d: object) -> AccessConfig:
        # socketGid is optional: devices provisioned before it existed keep the 0600 socket
        if not isinstance(d, dict) or not {"roles", "tas"} <= set(d) <= {"roles", "tas", "socketGid"}:
            raise _bad("access section must have exactly roles, tas and optionally socketGid")
        roles: dict[str, Role] = {}
        if not isinstance(d["roles"], dict) or not isinstance(d["tas"], dict):
            raise _bad("roles and tas must be objects")
        for name, r in d["roles"].items():
            if not isinstance(r, dict) or set(r) != {"uids", "gids"}:
                raise _bad(f"role {name!r} must have exactly uids and gids")
            ids = r["uids"] + r["gids"] if isinstance(r["uids"], list) and isinstance(r["gids"], list) else None
            if ids is None or not all(_valid_id(i) for i in ids):
                raise _bad(f"role {name!r}: uids and gids must be lists of integers in 0..{MAX_ID}")
            roles[name] = Role(frozenset(r["uids"]), frozenset(r["gids"]))
        defined = set(roles) | set(ROLES)
        tas: dict[str, tuple[str, ...]] = {}
        for ta, allowed in d["tas"].items():
            if ta not in TA_ROLES_DEFAULT:
                raise _bad(f"unknown trusted app {ta!r}")
            if not isinstance(allowed, list) or not all(isinstance(a, str) and a in defined for a in allowed):
                raise _bad(f"trusted app {ta!r} names an undefined role")
            tas[ta] = tuple(allowed)
        gid = d.get("socketGid")
        if gid is not None and not _valid_id(gid):
            raise _bad("socketGid must be null or a non-negative integer")
        return cls(roles, tas, gid)


@dataclass(frozen=True)
class TeeConfig:
    measured: MeasuredConfig = field(default_factory=MeasuredConfig)
    access: AccessConfig = field(default_factory=AccessConfig)

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "measured": self.measured.to_json(), "access": self.access.to_json()}

    @classmethod
    def from_json(cls, d: object) -> TeeConfig:
        if not isinstance(d, dict) or set(d) != {"version", "measured", "access"} or d["version"] != 1:
            raise _bad("expected {version: 1, measured, access}")
        return cls(MeasuredConfig.from_json(d["measured"]), AccessConfig.from_json(d["access"]))

    @classmethod
    def load(cls, path: Path) -> TeeConfig:
        try:
            return cls.from_json(json.loads(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise _bad(f"cannot read {path}: {exc}") from exc

    def save(self, path: Path) -> None:
        write_private(path, json.dumps(self.to_json(), indent=2).encode() + b"\n")
