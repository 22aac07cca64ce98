"""A private Docker Engine for one test: a second ``dockerd`` with its own socket, data root, exec root
and pid file, that the test may really stop (SIGTERM to its pid, as ``systemctl stop docker`` does)
and start again on the same data root, without touching the machine's engine.

It must not touch the host's networking either. It runs in a network namespace of its own
(``unshare --net``): ``--bridge=none`` makes dockerd *delete* an existing ``docker0`` at start-up
(seen here: the machine's engine lost its bridge to this fixture), so in the host's namespace no flag
is safe enough. Inside its namespace: no default bridge, no iptables rules, no masquerading, no IP
forwarding; its containers' host network is that empty namespace (the agent talks to it over its Unix
socket, which namespaces do not separate).
Live restore is off (Docker's default), so stopping this dockerd stops its containers, and when it is
back they are ``exited``, exactly what an edge device sees when its engine restarts.

Needs root and ``dockerd`` on PATH; otherwise the fixture skips with a "NOT RUN:" reason (listed at the
end of the session, tests/conftest.py). Everything lives under one short directory in /tmp (Unix
socket paths are limited to ~108 bytes: containerd's sockets live under the exec root), removed at
the end with anything still mounted or running from it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

DOCKERD = "dockerd"


class EngineStartError(RuntimeError):
    pass


class PrivateEngine:
    """One dockerd under ``root``; ``start()`` / ``stop()`` as often as a test likes, ``close()`` once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.data_root = root / "data"
        self.exec_root = root / "x"  # short: containerd's socket is <exec-root>/containerd/containerd.sock
        self.pidfile = root / "dockerd.pid"
        self.log = root / "dockerd.log"
        self.config_file = root / "daemon.json"  # not /etc/docker/daemon.json: nothing of the main engine's
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def host(self) -> str:
        """What ``DOCKER_HOST`` / ``base_url`` should say to reach this engine."""
        return f"unix://{self.socket}"

    def client(self, timeout: int = 60) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def argv(self) -> list[str]:
        return ["unshare", "--net", DOCKERD, "--host", self.host, "--data-root", str(self.data_root),
                "--exec-root", str(self.exec_root),
                "--pidfile", str(self.pidfile), "--config-file", str(self.config_file),
                "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip-forward=false",
                "--live-restore=false"]

    def start(self, timeout: float = 60.0) -> float:
        """Start dockerd and wait until it answers ``ping``; the seconds it took."""
        assert not self.running, "already running"
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text("{}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        began = time.monotonic()
        with open(self.log, "ab") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(self.argv())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                            start_new_session=True)
        self.starts += 1
        deadline = began + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineStartError(f"dockerd exited with {self.process.returncode}: {self.log_tail()}")
            if self.socket.exists():
                client = self.client(timeout=5)
                try:
                    if client.ping():
                        return time.monotonic() - began
                except Exception as exc:  # not serving yet
                    last = exc
                finally:
                    client.close()
            time.sleep(0.1)
        self.stop()
        raise EngineStartError(f"dockerd did not answer in {timeout:.0f} s ({last!r}): {self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM to dockerd's pid and wait until it has exited (it stops its containers and its
        containerd first); SIGKILL only as a last resort. dockerd's exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        containerd = self._containerd_pid()
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
        if containerd is not None:  # dockerd stops the containerd it started; make sure of it
            _terminate([containerd], timeout=10)
        return process.returncode

    def _containerd_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.exec_root / "containerd" / "containerd.pid").read_text().strip())
        return None

    def leftover_processes(self) -> list[int]:
        """Processes whose command line names this engine's directory (dockerd, containerd, shims)."""
        marker = str(self.root).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
        return found

    def mounts(self) -> list[str]:
        """Mount points under this engine's directory (deepest first)."""
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].encode().decode("unicode_escape")  # \040 for a space, etc.
            if point == str(self.root) or point.startswith(f"{self.root}/"):
                points.append(point)
        return sorted(points, key=len, reverse=True)

    def close(self) -> None:
        """Stop it, then make sure nothing of it is left: processes, mounts, directories."""
        try:
            self.stop()
        finally:
            _terminate(self.leftover_processes(), timeout=10)
            for point in self.mounts():
                subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def copy_image_from(self, source: Any, tag: str) -> float:
        """``docker save`` of ``tag`` from the ``source`` engine streamed into ``docker load`` here; seconds."""
        began = time.monotonic()
        target = self.client(timeout=600)
        try:
            target.api.load_image(source.api.get_image(tag), quiet=True)
            target.api.inspect_image(tag)  # there now, under the same tag
        finally:
            target.close()
        return time.monotonic() - began


def _terminate(pids: list[int], timeout: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while any(_alive(pid) for pid in alive) and time.monotonic() < deadline:
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is gone for our purposes
        if (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@pytest.fixture
def private_engine(tmp_path: Path) -> Iterator[PrivateEngine]:
    """A running private dockerd (see the module's docstring), gone with its directories afterwards
    (its log is kept as the test's ``private-dockerd.log``)."""
    if os.geteuid() != 0:
        pytest.skip("NOT RUN: a private dockerd needs root (run the container tests as root, as .ci/run does)")
    if shutil.which("unshare") is None:
        pytest.skip("NOT RUN: no `unshare` (util-linux): the private engine needs a network namespace of its own")
    if shutil.which(DOCKERD) is None:
        pytest.skip("NOT RUN: no dockerd on PATH for a private Docker Engine (Debian: apt-get install docker.io)")
    host_interfaces = sorted(os.listdir("/sys/class/net"))
    engine = PrivateEngine(Path(tempfile.mkdtemp(prefix="edbd-", dir="/tmp")))
    try:
        try:
            engine.start()
        except EngineStartError as exc:
            pytest.skip(f"NOT RUN: a private dockerd could not start: {exc}")
        yield engine
    finally:
        began = time.monotonic()
        try:
            engine.stop()
            with contextlib.suppress(OSError):
                shutil.copyfile(engine.log, tmp_path / "private-dockerd.log")
        finally:
            stopped = time.monotonic()
            engine.close()
            print(f"private dockerd: stopped in {stopped - began:.1f} s, its directories removed in "
                  f"{time.monotonic() - stopped:.1f} s")
    # the host's network interfaces (the machine engine's docker0 among them) are as they were
    assert sorted(os.listdir("/sys/class/net")) == host_interfaces
