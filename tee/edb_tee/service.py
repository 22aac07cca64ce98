"""``edb tee serve``: harden the process, open the device state, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from edb_tee.access import summary
from edb_tee.config import AccessConfig
from edb_tee.core import TeeCore, open_device_state
from edb_tee.hardening import harden_process
from edb_tee.paths import DeviceLayout
from edb_tee.server import TeeServer

log = logging.getLogger("edb_tee")


class SharedSocketServer(TeeServer):
    """The socket mode the allow-list asks for: 0600 (owner only) by default; 0660 owned by
    ``socketGid`` when the modules run as other uids. Reaching the socket grants nothing by itself:
    every connection's SO_PEERCRED is still checked against the roles."""

    def __init__(self, core: TeeCore, socket_path: Path, access: AccessConfig) -> None:
        super().__init__(core, socket_path)
        self.socket_gid = access.socket_gid

    def _set_mode(self, path: Path) -> None:
        if self.socket_gid is None:
            super()._set_mode(path)
            return
        os.chown(path, -1, self.socket_gid)  # the TEE's uid must be root or a member of the group
        os.chmod(path, 0o660)


def run_service(device_dir: Path, socket_path: Path | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = harden_process()  # before any secret is in memory
    log.info("hardening: dumpable=%s core=%d memlock=%d", report.dumpable, report.core_limit, report.memlock_limit)
    layout = DeviceLayout(device_dir)
    state = open_device_state(layout)
    state.storage.sweep()
    core = TeeCore(state)
    access = state.config.access
    server = SharedSocketServer(core, socket_path or layout.socket, access)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.bind()
        log.info("device %s, measurement %s, svn %d", state.identity.device_id, state.measurement,
                 state.config.measured.tee_svn)
        (log.warning if access.single_uid() is not None else log.info)("%s", summary(access))
        server.serve_forever()
    finally:
        server.shutdown()
        core.close()
        log.info("stopped; plaintext buffers overwritten")
    return 0
