"""`python -m edb_local.hub --state-dir DIR --address IP --hub-name NAME --cert PEM --key PEM
--owner-key-file FILE [--mqtt-port 8883] [--https-port 443] [--file-upload-connection-string-file FILE
--file-upload-ca PEM]`

Serves until SIGTERM/SIGINT. Prints one JSON line to stdout once listening:
`{"ready": true, "address": ..., "hubName": ..., "serviceConnectionString": ...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from edb_local.hub.config import HubConfig, load_or_create_owner_key
from edb_local.hub.errors import HubError
from edb_local.hub.server import HubServer


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m edb_local.hub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", required=True, type=Path, help="the hub's directory (hub.sqlite)")
    parser.add_argument("--address", required=True, help="loopback address to bind (127.x.y.z)")
    parser.add_argument("--hub-name", required=True, help="IoT Hub host name devices sign for")
    parser.add_argument("--cert", required=True, type=Path, help="server certificate PEM (IP SAN for --address)")
    parser.add_argument("--key", required=True, type=Path, help="server private key PEM")
    parser.add_argument("--owner-key-file", required=True, type=Path,
                        help="base64 key of the iothubowner policy; created (0600) if missing")
    parser.add_argument("--mqtt-port", type=int, default=8883)
    parser.add_argument("--https-port", type=int, default=443)
    parser.add_argument("--file-upload-connection-string-file", type=Path, default=None,
                        help="file (0600) holding the storage account connection string for file upload")
    parser.add_argument("--file-upload-ca", type=Path, default=None,
                        help="CA bundle to trust for that storage account (the stack CA for Azurite)")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def _read_secret(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise HubError(f"cannot read {path}: {exc.strerror}", code="HUB_CONFIG_INVALID") from None


async def _serve(config: HubConfig) -> None:
    server = HubServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"ready": True, "address": config.address, "hubName": config.hub_name,
                      "mqttPort": config.mqtt_port, "httpsPort": config.https_port,
                      "serviceHost": config.service_host}), flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = HubConfig(state_dir=args.state_dir, address=args.address, hub_name=args.hub_name,
                           cert_path=args.cert, key_path=args.key,
                           owner_key=load_or_create_owner_key(args.owner_key_file),
                           mqtt_port=args.mqtt_port, https_port=args.https_port,
                           file_upload_connection_string=_read_secret(args.file_upload_connection_string_file),
                           file_upload_ca=args.file_upload_ca)
        asyncio.run(_serve(config))
    except HubError as exc:
        print(json.dumps({"ready": False, "error": exc.to_dict()}), flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
