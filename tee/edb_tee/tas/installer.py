"""Installer trusted app: begin / evidence / complete (attested or legacy) / abort, uninstall.

Transactions belong to the calling process (its pid from SO_PEERCRED): another process cannot
continue or abort them, and they are dropped when the process's last connection closes.
"""

from __future__ import annotations

from edb.tee.commands import InstallerCmd
from edb.tee.protocol import Fd, Param, Text
from edb_tee.tas.base import Call, Handler, json_blob


def begin_install(c: Call) -> list[Param]:
    name, fd = c.expect(Text, Fd)
    return json_blob(c.core.installer.begin(name.text, c.take_fd(fd), c.peer.pid).to_json())


def get_install_evidence(c: Call) -> list[Param]:
    txn, nonce = c.expect(Text, Text)
    return json_blob(c.core.installer.evidence(txn.text, nonce.text, c.peer.pid).to_json())


def complete_install(c: Call) -> list[Param]:
    txn, jwe = c.expect(Text, Text)
    return json_blob(c.core.installer.complete(txn.text, jwe.text, c.peer.pid).to_json())


def complete_install_legacy(c: Call) -> list[Param]:
    txn, wrapped = c.expect(Text, Text)
    return json_blob(c.core.installer.complete_legacy(txn.text, wrapped.text, c.peer.pid).to_json())


def abort_install(c: Call) -> list[Param]:
    (txn,) = c.expect(Text)
    c.core.installer.abort(txn.text, c.peer.pid)
    return []


def uninstall(c: Call) -> list[Param]:
    (name,) = c.expect(Text)
    c.core.installer.uninstall(name.text)
    return []


COMMANDS: dict[int, Handler] = {
    InstallerCmd.BEGIN_INSTALL: begin_install,
    InstallerCmd.GET_INSTALL_EVIDENCE: get_install_evidence,
    InstallerCmd.COMPLETE_INSTALL: complete_install,
    InstallerCmd.COMPLETE_INSTALL_LEGACY: complete_install_legacy,
    InstallerCmd.ABORT_INSTALL: abort_install,
    InstallerCmd.UNINSTALL: uninstall,
}
