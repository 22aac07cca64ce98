"""``python -m edb_local.fleet.tee_host DEVICE_DIR...``: one process serving the TEEs of several
simulated devices. Each device keeps its own state (HUK, sealed identity, attestation key, rollback
floors, installed packages) and its own socket, served by the real :class:`edb_tee.server.TeeServer`
exactly as ``edb tee serve`` does; only the interpreter (and ONNX Runtime's code) is shared, which is
what lets one machine hold hundreds of them."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from edb_tee.core import TeeCore, open_device_state
from edb_tee.paths import DeviceLayout
from edb_tee.service import SharedSocketServer

log = logging.getLogger("edb_fleet.tee_host")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    servers: list[tuple[SharedSocketServer, TeeCore]] = []
    for device_dir in argv:
        layout = DeviceLayout(Path(device_dir))
        state = open_device_state(layout)
        state.storage.sweep()
        core = TeeCore(state)
        server = SharedSocketServer(core, layout.socket, state.config.access)
        server.bind()
        servers.append((server, core))
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threads = [threading.Thread(target=s.serve_forever, daemon=True, name=f"tee-{i}") for i, (s, _) in
               enumerate(servers)]
    for thread in threads:
        thread.start()
    print(f"serving {len(servers)} TEE(s)", flush=True)
    stopped.wait()
    for server, core in servers:
        server.shutdown()
        core.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
