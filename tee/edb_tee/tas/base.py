"""What a trusted-app command receives, and the registry entry of a trusted app."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edb.errors import TeeError
from edb.tee.errors import BAD_PARAMETERS, UNKNOWN_COMMAND
from edb.tee.protocol import Blob, Fd, Param
from edb.tee.transport import PeerCredentials

if TYPE_CHECKING:
    from edb.tee.shm import TeeRegion
    from edb_tee.core import TeeCore


@dataclass(slots=True)
class Connection:
    """What one client connection holds beyond its sessions: its shared-memory region, if it
    attached one (unmapped when the connection ends)."""

    region: TeeRegion | None = None

    def close(self) -> None:
        region, self.region = self.region, None
        if region is not None:
            region.close()


@dataclass(slots=True)
class Call:
    core: TeeCore
    peer: PeerCredentials
    params: list[Param]
    fds: list[int]
    taken: set[int] = field(default_factory=set)  # only used with descriptors (see the server)
    conn: Connection = field(default_factory=Connection)  # the calling connection's state

    def expect(self, *kinds: type) -> list[Any]:
        if len(self.params) != len(kinds) or not all(isinstance(p, k) for p, k in zip(self.params, kinds, strict=True)):
            want = ", ".join(k.__name__ for k in kinds)
            got = ", ".join(type(p).__name__ for p in self.params)
            raise TeeError(f"expected parameters ({want}), got ({got})", code=BAD_PARAMETERS)
        return list(self.params)

    def take_fd(self, ref: Fd) -> int:
        """Ownership of a passed descriptor moves to the caller (the server closes the others)."""
        if ref.index in self.taken or ref.index >= len(self.fds):
            raise TeeError("descriptor parameter already used", code=BAD_PARAMETERS)
        self.taken.add(ref.index)
        fd: int = self.fds[ref.index]
        return fd

    def close_untaken(self) -> None:
        if self.fds:
            for i, fd in enumerate(self.fds):
                if i not in self.taken:
                    os.close(fd)


Handler = Callable[[Call], list[Param]]


@dataclass(frozen=True)
class TrustedApp:
    uuid: uuid.UUID
    name: str
    commands: dict[int, Handler]

    def invoke(self, command: int, call: Call) -> list[Param]:
        handler = self.commands.get(command)
        if handler is None:
            raise TeeError(f"trusted app {self.name} has no command {command}", code=UNKNOWN_COMMAND)
        return handler(call)


def json_blob(data: Any) -> list[Param]:
    return [Blob(json.dumps(data, separators=(",", ":")).encode())]
