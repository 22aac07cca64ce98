"""Where a device's state lives (Contract 5: ``.edb/devices/<device-id>/``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from edb.errors import TeeError
from edb.tee.errors import BAD_NAME

DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise TeeError(f"invalid device id {device_id!r}", code=BAD_NAME)
    return device_id


@dataclass(frozen=True)
class DeviceLayout:
    """``<device>/`` is the device; ``<device>/tee/`` (0700) is readable by the TEE service only."""

    root: Path

    @classmethod
    def for_device(cls, state_dir: Path | str, device_id: str) -> DeviceLayout:
        return cls(Path(state_dir) / "devices" / check_device_id(device_id))

    # normal-world (public) files
    @property
    def device_json(self) -> Path:
        return self.root / "device.json"

    @property
    def certificate(self) -> Path:
        return self.root / "device-cert.pem"

    @property
    def socket(self) -> Path:
        return self.root / "tee.sock"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    # secure-world files
    @property
    def tee(self) -> Path:
        return self.root / "tee"

    @property
    def huk(self) -> Path:
        return self.tee / "huk"

    @property
    def config(self) -> Path:
        return self.tee / "config.json"

    @property
    def rpmb(self) -> Path:
        return self.tee / "rpmb.json"

    @property
    def objects(self) -> Path:
        return self.tee / "objects"

    @property
    def ort_empty(self) -> Path:
        """An empty directory: ONNX Runtime resolves the layout's stub locations against it."""
        return self.tee / "ort-empty"

    @property
    def lock(self) -> Path:
        return self.tee / "lock"

    def provisioned(self) -> bool:
        return self.huk.exists() and self.config.exists()


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600, fsynced (file and directory)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
