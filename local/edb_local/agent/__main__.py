"""``python -m edb_local.agent``: run the edge agent stand-in for one device until SIGTERM/SIGINT.

The supervisor (``edb local up``) starts it with the stack's settings; it can also run alone
against any hub stand-in.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from edb_local.agent.config import AgentConfig
from edb_local.agent.containers import stack_id
from edb_local.agent.module_map import ModuleMap
from edb_local.agent.reconcile import BackoffPolicy
from edb_local.agent.runtime import EdgeAgent
from edb_local.supervisor.envfile import read_env_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edb_local.agent", description=__doc__)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--device-id", required=True)
    p.add_argument("--hub-name", required=True, help="IoT Hub host name modules sign their SAS tokens for")
    p.add_argument("--gateway", required=True, help="address modules connect to (IOTEDGE_GATEWAYHOSTNAME)")
    p.add_argument("--ca", type=Path, required=True, help="CA bundle (PEM) served as the trust bundle")
    p.add_argument("--service-connection-string-file", type=Path, required=True,
                   help="file (0600) holding the hub service connection string used for module identities")
    p.add_argument("--module-env-file", type=Path, help="KEY=value defaults every module gets (local.env)")
    p.add_argument("--host-service", action="append", default=[], metavar="NAME=SOCKET",
                   help="a host-provided device service and its Unix socket (e.g. tee=/path/tee.sock)")
    p.add_argument("--module-map", type=Path, help="extra image -> entry point map (JSON)")
    p.add_argument("--runtime", choices=("process", "docker"), default="process",
                   help="modules as local processes, or as containers through the Docker Engine API")
    p.add_argument("--stack-id", default="", help="Docker runtime: label/prefix of this stack's containers")
    p.add_argument("--backoff-base", type=float, default=1.0)
    p.add_argument("--backoff-max", type=float, default=60.0)
    p.add_argument("--stop-timeout", type=float, default=10.0)
    p.add_argument("--resync-interval", type=float, default=30.0)
    p.add_argument("--reconnect-after", type=float, default=30.0,
                   help="seconds disconnected before the hub client is recreated")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> AgentConfig:
    host_services: dict[str, Path] = {}
    for item in args.host_service:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--host-service expects NAME=SOCKET, got {item!r}")
        host_services[name] = Path(path)
    module_map_path = args.module_map or args.state_dir / "agent" / "module_map.json"
    return AgentConfig(
        state_dir=args.state_dir.resolve(),
        device_id=args.device_id,
        hub_hostname=args.hub_name,
        gateway_hostname=args.gateway,
        ca_path=args.ca.resolve(),
        service_connection_string=args.service_connection_string_file.read_text().strip(),
        host_defaults=read_env_file(args.module_env_file) if args.module_env_file else {},
        host_services=host_services,
        backoff=BackoffPolicy(base_s=args.backoff_base, max_s=args.backoff_max),
        stop_timeout_s=args.stop_timeout,
        resync_interval_s=args.resync_interval,
        reconnect_after_s=args.reconnect_after,
        module_map=ModuleMap.from_file(module_map_path),
        runtime=args.runtime,
        stack=args.stack_id or stack_id(args.state_dir),
    )


async def amain(config: AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await EdgeAgent(config).run(stop)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The SDK's debug chatter is not needed; its warnings are.
    logging.getLogger("azure").setLevel(logging.WARNING)
    args = parse_args(argv)
    config = build_config(args)
    asyncio.run(amain(config))


if __name__ == "__main__":
    main()
