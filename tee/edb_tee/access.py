"""Peer-credential allow-list decisions. Pure: credentials and configuration in, a decision out."""

from __future__ import annotations

from typing import Any

from edb.tee.transport import PeerCredentials
from edb_tee.config import AccessConfig

SINGLE_UID_NOTE = ("development default: one uid holds every role, so the installer/runner split is not "
                   "enforced; set per-role uids with `edb device access set` (service stopped)")


def roles_of(peer: PeerCredentials, access: AccessConfig) -> frozenset[str]:
    """The roles a connecting process holds: by its uid, or by its primary gid."""
    return frozenset(name for name, role in access.roles.items() if peer.uid in role.uids or peer.gid in role.gids)


def may_open(roles: frozenset[str], ta_name: str, access: AccessConfig) -> bool:
    return bool(roles & set(access.tas.get(ta_name, ())))


def describe(access: AccessConfig) -> dict[str, Any]:
    """What `edb device access show`, the service's start-up log and `edb local status` report:
    whether the role split is in force, who holds each role, and how the socket is shared."""
    single = access.single_uid()
    out: dict[str, Any] = {"mode": "single-uid" if single is not None else "per-role"}
    if single is not None:
        out["note"] = SINGLE_UID_NOTE
    out["roles"] = {name: {"uids": sorted(r.uids), "gids": sorted(r.gids)} for name, r in sorted(access.roles.items())}
    out["trustedApps"] = {ta: list(roles) for ta, roles in sorted(access.tas.items())}
    out["socket"] = "0600 (owner only)" if access.socket_gid is None else f"0660, group {access.socket_gid}"
    return out


def summary(access: AccessConfig) -> str:
    """One line of :func:`describe`, for logs and status tables."""
    single = access.single_uid()
    if single is not None:
        return f"allow-list: single uid {single} holds every role (development default, roles not separated)"
    held = "; ".join(f"{name} uids={sorted(r.uids)} gids={sorted(r.gids)}" for name, r in sorted(access.roles.items()))
    sock = "socket 0600" if access.socket_gid is None else f"socket 0660 group {access.socket_gid}"
    return f"allow-list: per-role: {held}; {sock}"
