"""The installer, runner and reporter under failures: killed mid-download and inside the TEE
transaction, the hub killed mid-install, key release service down for a while, reporter offline
while events accumulate."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from e2e_stack import DEVICE, INSTALLER, NAME, E2EStack, file_server, wait_for

from edb.schemas import PackageState
from edb_cloud.demo_checks import metrics_with_results
from edb_cloud.releases import Release
from edb_local.stack_ca import StackCA


def test_installer_killed_mid_download_resumes_and_converges(e2e: E2EStack, tmp_path: Path) -> None:
    v2 = e2e.releases["2.0.0"]
    padded = tmp_path / "digits-2.0.0.cpk"
    # Serve v2's package bytes slowly from another HTTPS origin, so the kill lands mid-download.
    data = (e2e.state_dir / "cloud" / "packages" / f"{NAME}-2.0.0.cpk").read_bytes()
    padded.write_bytes(data)
    ca = StackCA.load_or_create(e2e.state_dir / "ca")
    with file_server(ca, tmp_path / "certs", bytes_per_second=max(len(data) // 3, 4096)) as server:
        server.files["digits.cpk"] = data
        release = Release(NAME, NAME, "2.0.0", 2, server.url("digits.cpk"), v2.sha256, v2.size, "", "")
        e2e.rollout(release)
        cache = Path(e2e.state_dir / "agent" / "volumes" / "edb-package-cache" / NAME)
        part = cache / f"{v2.sha256}.part"
        wait_for("a partial download", lambda: part.exists() and part.stat().st_size > 0, 30, poll=0.05)
        old = e2e.kill(f"module.{INSTALLER}")
        assert e2e.reported_package().installed_version == "1.0.0"  # type: ignore[union-attr]
        wait_for("the agent to restart the installer", lambda: e2e.pid(f"module.{INSTALLER}") not in (None, old), 30)
        e2e.wait_state("2.0.0", PackageState.INSTALLED, timeout=60)
        e2e.wait_serving("2.0.0")
        resumed = [r for r in server.ranges if r and r.startswith("bytes=") and not r.startswith("bytes=0-")]
        assert resumed, server.ranges  # the restarted installer continued where the killed one stopped
    assert [(p.name, p.version) for p in e2e.tee_installed()] == [(NAME, "2.0.0")]  # nothing half-installed
    assert not part.exists() and not any(cache.glob("*.cpk"))  # cache cleaned after the install


@contextlib.contextmanager
def key_release_held(e2e: E2EStack) -> Iterator[None]:
    """The key release service frozen (SIGSTOP): an installer that reaches ``releasing`` stays there,
    its TEE transaction open, until the service is resumed (SIGCONT, always, even if the test fails)."""
    pid = e2e.pid("keyrelease")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def open_tee_installs(e2e: E2EStack) -> int:
    from edb.tee.client import TeeClient

    with TeeClient(e2e.config.require("EDB_TEE_SOCKET", "TEE socket")) as tee:
        return int(tee.status()["installs"])


def test_hub_killed_mid_install_converges_with_nothing_half_installed(e2e: E2EStack) -> None:
    cache = e2e.state_dir / "agent" / "volumes" / "edb-package-cache" / NAME
    with key_release_held(e2e):
        e2e.rollout(e2e.releases["2.0.0"])
        e2e.wait_state("2.0.0", PackageState.RELEASING, timeout=30, poll=0.05)
        assert open_tee_installs(e2e) == 1  # the install is in flight inside the TEE ...
        e2e.kill("hub", signal.SIGKILL)  # ... when the hub dies without a word to its clients
        assert [(p.name, p.version) for p in e2e.tee_installed()] == [(NAME, "1.0.0")]
    # the key release answers again; the install goes on while the hub is down; then the hub comes back
    e2e.up()  # restarts what died, keeps state
    e2e.wait_state("2.0.0", PackageState.INSTALLED, timeout=90)
    e2e.wait_serving("2.0.0", timeout=60)
    assert [(p.name, p.version) for p in e2e.tee_installed()] == [(NAME, "2.0.0")]
    assert open_tee_installs(e2e) == 0 and not any(cache.glob("*"))  # nothing half-installed or left over
    # and twin patches reach the modules again after the restart
    e2e.rollout(e2e.releases["3.0.0"])
    e2e.wait_state("3.0.0", PackageState.INSTALLED, timeout=60)
    e2e.wait_serving("3.0.0", timeout=60)


def test_installer_killed_inside_the_tee_transaction_keeps_the_old_version_and_converges(e2e: E2EStack) -> None:
    with key_release_held(e2e):
        e2e.rollout(e2e.releases["2.0.0"])
        e2e.wait_state("2.0.0", PackageState.RELEASING, timeout=30, poll=0.05)
        assert open_tee_installs(e2e) == 1
        old = e2e.kill(f"module.{INSTALLER}")  # SIGKILL between begin_install and complete_install
        # the TEE drops the dead process's transaction; the installed version is untouched and serves on
        wait_for("the TEE to drop the dead installer's transaction", lambda: open_tee_installs(e2e) == 0, 15)
        assert [(p.name, p.version) for p in e2e.tee_installed()] == [(NAME, "1.0.0")]
        assert e2e.serving() == "1.0.0"
    wait_for("the agent to restart the installer", lambda: e2e.pid(f"module.{INSTALLER}") not in (None, old), 30)
    e2e.wait_state("2.0.0", PackageState.INSTALLED, timeout=60)
    e2e.wait_serving("2.0.0")
    assert [(p.name, p.version) for p in e2e.tee_installed()] == [(NAME, "2.0.0")]
    assert open_tee_installs(e2e) == 0


def test_key_release_down_installer_retries_reports_and_recovers(e2e: E2EStack) -> None:
    e2e.kill("keyrelease", signal.SIGTERM)
    e2e.rollout(e2e.releases["2.0.0"])

    def failing_and_retrying() -> bool:
        r = e2e.reported_package()
        return bool(r and r.version == "2.0.0" and r.state is PackageState.FAILED and r.error
                    and r.error.code.startswith("KR_") and r.attempts >= 2)

    wait_for("reported retries while the key release service is down", failing_and_retrying, 60)
    r = e2e.reported_package()
    assert r is not None and r.installed_version == "1.0.0" and e2e.serving() == "1.0.0"
    e2e.up()  # the service comes back
    e2e.wait_state("2.0.0", PackageState.INSTALLED, timeout=60)
    e2e.wait_serving("2.0.0")
    alerts = [e for e in e2e.upstream() if e.application.get("messageType") == "alert"]
    assert not alerts, "a transient outage is not a security alert"


def test_reporter_offline_events_and_results_all_arrive_later(e2e: E2EStack) -> None:
    manifest = e2e.manifest()
    agent = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    agent["telemetry_reporter"]["status"] = "stopped"
    e2e.deploy(manifest, running=(INSTALLER, "inference_runner", "simulated_sensor"))
    wait_for("the reporter to stop", lambda: e2e.pid("module.telemetry_reporter") is None or not os.path.exists(
        f"/proc/{e2e.pid('module.telemetry_reporter')}"), 30)
    e2e.upstream()
    offline_from = e2e._since
    e2e.rollout(e2e.releases["2.0.0"])  # install events while the reporter is away
    e2e.wait_state("2.0.0", PackageState.INSTALLED)
    e2e.wait_serving("2.0.0")
    wait_for("answers from 2.0.0 while the reporter is away",
             lambda: (e2e.hub.module_twin(DEVICE, "inference_runner").reported.get("stats") or {}).get("count", 0) > 20,
             30)
    assert not [e for e in e2e.upstream() if e.seq > offline_from and e.module == "telemetry_reporter"]
    # the reporter comes back; the sensor pauses so the totals can settle (a deployment replaces the
    # modules' desired properties, so the pause goes into the manifest)
    agent["telemetry_reporter"]["status"] = "running"
    manifest["modulesContent"]["simulated_sensor"]["properties.desired"]["enabled"] = False
    e2e.deploy(manifest)

    seen: list[tuple[int, int]] = []

    def all_counted() -> bool:
        answered = (e2e.hub.module_twin(DEVICE, "inference_runner").reported.get("stats") or {}).get("count")
        # upstream delivery is at-least-once: a window re-sent after a restart has the same message id
        metrics = {e.system.get("message_id"): e for e in e2e.upstream()
                   if e.application.get("messageType") == "metrics"}
        counted = sum(e.payload["inference"]["count"] for e in metrics.values())
        seen.append((answered, counted))
        return bool(answered) and counted == answered

    try:
        wait_for("every answer counted upstream", all_counted, 60)
    except AssertionError as exc:
        raise AssertionError(f"(answered, counted upstream) last seen {seen[-3:]}") from exc
    later = [e for e in e2e.upstream() if e.seq > offline_from]
    assert metrics_with_results(later, f"{NAME}@2.0.0")
    installs = sum(e.payload["installs"]["count"] for e in later if e.application.get("messageType") == "metrics")
    assert installs >= 1  # the install event sent while the reporter was offline arrived
