"""Can this host run a platform's binaries? arm64 images on an amd64 host run under qemu-user.

Checked before a build, because the failure otherwise shows up far away and late: without an
emulator the base image's maintainer scripts fail inside mmdebstrap; with Debian bookworm's
qemu-user-static 7.2 the images build, but the arm64 TEE dies at start-up ("qemu: uncaught target
signal 11" importing onnxruntime) and its container hangs. qemu 10.0 (bookworm-backports) runs
them; 8.x and 9.x were not tried, so they pass with a warning. ``tools/with-docker --arm64``
installs a new enough one.

The decision is pure (:func:`emulation_problem`); :func:`probe` reads the host.
"""

from __future__ import annotations

import platform as host_platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edb_local.images.plan import Platform

#: the oldest qemu-user seen to run onnxruntime's arm64 wheels (7.2 does not)
TESTED_QEMU = (10, 0)
#: below this: known not to work
MIN_QEMU = (8, 0)
_HOST_MACHINES = {"x86_64": "linux/amd64", "amd64": "linux/amd64", "aarch64": "linux/arm64", "arm64": "linux/arm64"}
_BINFMT_ENTRY = {"linux/arm64": "qemu-aarch64", "linux/amd64": "qemu-x86_64"}
_VERSION = re.compile(r"version (\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class HostEmulation:
    """What the host offers for one target platform."""

    host: str  # linux/amd64 | linux/arm64 | the raw machine name if unknown
    entry: str | None  # the binfmt_misc entry's text, None if absent
    interpreter_version: str | None  # ``<interpreter> --version``'s first line, None if not run


@dataclass(frozen=True)
class EmulationVerdict:
    ok: bool
    message: str = ""  # why not (ok False), or a warning (ok True)
    code: str = ""


def parse_binfmt_entry(text: str) -> tuple[bool, str | None, str]:
    """(enabled, interpreter path, flags) of a /proc/sys/fs/binfmt_misc entry."""
    lines = [line.strip() for line in text.splitlines()]
    enabled = bool(lines) and lines[0] == "enabled"
    interpreter = next((line.split(None, 1)[1] for line in lines if line.startswith("interpreter ")), None)
    flags = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("flags:")), "")
    return enabled, interpreter, flags


def parse_qemu_version(text: str) -> tuple[int, int, int] | None:
    match = _VERSION.search(text)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def emulation_problem(target: Platform, host: HostEmulation) -> EmulationVerdict:
    if host.host == target.docker:
        return EmulationVerdict(True)
    fix = "run it through tools/with-docker --arm64 (installs qemu-user-static >= 10 from bookworm-backports)"
    if host.entry is None:
        return EmulationVerdict(False, f"this {host.host} host cannot run {target.docker} binaries: no binfmt_misc "
                                f"entry {_BINFMT_ENTRY.get(target.docker, '?')} (qemu-user-static and "
                                f"binfmt-support); {fix}", "IMAGES_EMULATOR_MISSING")
    enabled, interpreter, flags = parse_binfmt_entry(host.entry)
    if not enabled or interpreter is None:
        return EmulationVerdict(False, f"the binfmt_misc entry for {target.docker} is disabled; "
                                "update-binfmts --enable qemu-aarch64, or " + fix, "IMAGES_EMULATOR_MISSING")
    if "F" not in flags:
        return EmulationVerdict(False, f"the binfmt_misc entry for {target.docker} lacks the F flag, so the emulator "
                                "is not usable inside containers; " + fix, "IMAGES_EMULATOR_MISSING")
    version = parse_qemu_version(host.interpreter_version or "")
    if version is None:
        return EmulationVerdict(True, f"emulator {interpreter}: version unknown ({host.interpreter_version!r}); "
                                f"qemu {TESTED_QEMU[0]}.{TESTED_QEMU[1]} is the one tested")
    shown = ".".join(map(str, version))
    if version[:2] < MIN_QEMU:
        return EmulationVerdict(False, f"qemu {shown} ({interpreter}) crashes in onnxruntime's {target.arch} wheels "
                                f"(uncaught target signal 11); {TESTED_QEMU[0]}.{TESTED_QEMU[1]} works: {fix}",
                                "IMAGES_EMULATOR_TOO_OLD")
    if version[:2] < TESTED_QEMU:
        return EmulationVerdict(True, f"qemu {shown} not tested (7.2 fails, {TESTED_QEMU[0]}.{TESTED_QEMU[1]} works)")
    return EmulationVerdict(True)


def probe(target: Platform) -> HostEmulation:
    machine = host_platform.machine()
    host = _HOST_MACHINES.get(machine, machine)
    if host == target.docker:
        return HostEmulation(host, None, None)
    entry_path = Path("/proc/sys/fs/binfmt_misc") / _BINFMT_ENTRY.get(target.docker, "-")
    try:
        entry = entry_path.read_text()
    except OSError:
        return HostEmulation(host, None, None)
    _, interpreter, _ = parse_binfmt_entry(entry)
    version: str | None = None
    if interpreter:
        # The file on disk; with the F flag the kernel keeps the one it opened at registration, so
        # an upgrade without re-registering (update-binfmts --disable/--enable) is not seen here.
        try:
            # Debian's aarch64-binfmt-P wrapper refuses to run outside binfmt: ask the binary it links to
            out = subprocess.run([str(Path(interpreter).resolve()), "--version"], capture_output=True, text=True,
                                 timeout=10, check=False)
            text = (out.stdout or out.stderr).strip()
            version = text.splitlines()[0] if text else None
        except (OSError, subprocess.TimeoutExpired):
            version = None
    return HostEmulation(host, entry, version)
