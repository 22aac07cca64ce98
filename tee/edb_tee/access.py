"""Peer-credential allow-list decisions. Pure: credentials and configuration in, a decision out."""

from __future__ import annotations

from edb.tee.transport import PeerCredentials
from edb_tee.config import AccessConfig


def roles_of(peer: PeerCredentials, access: AccessConfig) -> frozenset[str]:
    """The roles a connecting process holds: by its uid, or by its primary gid."""
    return frozenset(name for name, role in access.roles.items() if peer.uid in role.uids or peer.gid in role.gids)


def may_open(roles: frozenset[str], ta_name: str, access: AccessConfig) -> bool:
    return bool(roles & set(access.tas.get(ta_name, ())))
