"""Whether an image build may run another platform's binaries (pure decision; the probe reads /proc)."""

from __future__ import annotations

import pytest

from edb_local.images.emulation import (
    HostEmulation,
    emulation_problem,
    parse_binfmt_entry,
    parse_qemu_version,
    probe,
)
from edb_local.images.plan import platform_named

ARM64 = platform_named("linux/arm64")
AMD64 = platform_named("linux/amd64")
ENTRY = ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n"
         "magic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n")


def _host(entry: str | None = ENTRY, version: str | None = "qemu-aarch64 version 10.0.2 (Debian 1:10.0.2+ds-2)"
          ) -> HostEmulation:
    return HostEmulation("linux/amd64", entry, version)


def test_binfmt_entry_and_version_parsing() -> None:
    assert parse_binfmt_entry(ENTRY) == (True, "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "PF")
    assert parse_binfmt_entry("disabled\ninterpreter /x\nflags: \n")[0] is False
    assert parse_qemu_version("qemu-aarch64 version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)") == (7, 2, 19)
    assert parse_qemu_version("qemu-aarch64 version 10.0 (x)") == (10, 0, 0)
    assert parse_qemu_version("qemu: has to be run using kernel binfmt-misc subsystem") is None


def test_the_native_platform_needs_nothing() -> None:
    assert emulation_problem(AMD64, HostEmulation("linux/amd64", None, None)).ok
    assert emulation_problem(ARM64, HostEmulation("linux/arm64", None, None)).ok


def test_a_tested_qemu_passes_without_warning() -> None:
    verdict = emulation_problem(ARM64, _host())
    assert verdict.ok and verdict.message == ""


def test_bookworms_qemu_7_is_refused_with_the_fix() -> None:
    verdict = emulation_problem(ARM64, _host(version="qemu-aarch64 version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)"))
    assert not verdict.ok and verdict.code == "IMAGES_EMULATOR_TOO_OLD"
    assert "7.2.19" in verdict.message and "tools/with-docker --arm64" in verdict.message


@pytest.mark.parametrize("version", ["qemu-aarch64 version 8.2.2", "qemu-aarch64 version 9.1.0", None])
def test_untested_or_unknown_versions_pass_with_a_warning(version: str | None) -> None:
    verdict = emulation_problem(ARM64, _host(version=version))
    assert verdict.ok and verdict.message


@pytest.mark.parametrize("entry", [None, ENTRY.replace("enabled", "disabled"), ENTRY.replace("flags: PF", "flags: P")])
def test_no_usable_emulator_is_refused(entry: str | None) -> None:
    verdict = emulation_problem(ARM64, _host(entry=entry))
    assert not verdict.ok and verdict.code == "IMAGES_EMULATOR_MISSING"


def test_probe_of_this_host_agrees_with_the_platform_module() -> None:
    host = probe(AMD64)
    assert host.host in ("linux/amd64", "linux/arm64")
    if host.host == "linux/amd64":
        assert emulation_problem(AMD64, host).ok
