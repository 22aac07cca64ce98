"""The hub stand-in as its own process for the hub benchmarks (bench/hub_throughput.py,
bench/eventhub_throughput.py): a fresh loopback address, a certificate from the bench's CA, an
owner key, and the process's ready line."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
from pathlib import Path

from edb_local.hub.config import HubConfig
from edb_local.net import free_loopback_address
from edb_local.stack_ca import StackCA


class HubProcess:
    def __init__(self, workdir: Path, ca: StackCA, hub_name: str) -> None:
        self.address = free_loopback_address()
        creds = ca.issue_server("hub", ips=[self.address], out_dir=workdir / "certs")
        owner = workdir / "hub" / "owner.key"
        owner.parent.mkdir(parents=True)
        owner.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
        self.config = HubConfig(state_dir=workdir / "hub", address=self.address, hub_name=hub_name,
                                cert_path=creds.cert_path, key_path=creds.key_path,
                                owner_key=owner.read_text().strip())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edb_local.hub", "--state-dir", str(workdir / "hub"), "--address", self.address,
             "--hub-name", hub_name, "--cert", str(creds.cert_path), "--key", str(creds.key_path),
             "--owner-key-file", str(owner), "--log-level", "WARNING"],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline())
        if not ready.get("ready"):
            raise SystemExit(f"hub did not start: {ready}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
