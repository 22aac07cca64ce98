"""The installer's pure decisions: desired vs installed vs in flight, with backoff."""

from __future__ import annotations

import random

from edb.schemas import ErrorInfo, PackageState, ReportedPackage, parse_desired_packages
from edb.schemas.packages import DesiredPackage
from package_installer.backoff import Backoff
from package_installer.reconcile import (
    CancelInstall,
    Installed,
    Report,
    StartInstall,
    Uninstall,
    effective_desired,
    plan,
    record_failure,
)

SHA = "ab" * 32


def pkg(name: str = "digits", version: str = "1.0.0", sha: str = SHA) -> DesiredPackage:
    return DesiredPackage(name, version, f"https://blob.example/{name}-{version}.cpk", sha, 1000)


def installed_report(version: str, svn: int = 1, sha: str = SHA) -> ReportedPackage:
    return ReportedPackage(PackageState.INSTALLED, version, svn, sha, installed_version=version)


def test_new_desired_package_starts_an_install() -> None:
    p = plan({"digits": pkg()}, {}, {}, {}, {}, now=0)
    assert p.actions == [StartInstall(pkg(), 1)]


def test_installed_version_matching_desired_is_reported_once() -> None:
    have = {"digits": Installed("digits", "1.0.0", 3)}
    first = plan({"digits": pkg()}, have, {}, {}, {}, now=0)
    assert len(first.actions) == 1 and isinstance(first.actions[0], Report)
    assert first.actions[0].value is not None and first.actions[0].value.state is PackageState.INSTALLED
    assert first.actions[0].value.security_version == 3
    again = plan({"digits": pkg()}, have, {}, {}, {"digits": first.actions[0].value}, now=5)
    assert again.actions == []


def test_same_version_with_another_package_file_is_reinstalled() -> None:
    have = {"digits": Installed("digits", "1.0.0", 1, sha256="cd" * 32)}
    assert plan({"digits": pkg()}, have, {}, {}, {}, now=0).actions == [StartInstall(pkg(), 1)]
    same = {"digits": Installed("digits", "1.0.0", 1, sha256=SHA)}
    assert [type(a) for a in plan({"digits": pkg()}, same, {}, {}, {}, now=0).actions] == [Report]


def test_upgrade_starts_install_while_old_version_stays() -> None:
    have = {"digits": Installed("digits", "1.0.0", 1)}
    p = plan({"digits": pkg(version="2.0.0")}, have, {}, {}, {"digits": installed_report("1.0.0")}, now=0)
    assert p.actions == [StartInstall(pkg(version="2.0.0"), 1)]
    assert not any(isinstance(a, Uninstall) for a in p.actions)


def test_in_flight_job_with_same_identity_is_left_alone() -> None:
    want = pkg()
    p = plan({"digits": want}, {}, {"digits": want.identity}, {}, {}, now=0)
    assert p.actions == []


def test_changed_desired_cancels_the_running_job() -> None:
    old = pkg(version="1.0.0")
    p = plan({"digits": pkg(version="2.0.0")}, {}, {"digits": old.identity}, {}, {}, now=0)
    assert p.actions == [CancelInstall("digits")]


def test_removed_desired_uninstalls_a_managed_package_then_deletes_the_report() -> None:
    have = {"digits": Installed("digits", "1.0.0", 1)}
    reported = {"digits": installed_report("1.0.0")}
    assert plan({}, have, {}, {}, reported, now=0).actions == [Uninstall("digits")]
    assert plan({}, {}, {}, {}, reported, now=0).actions == [Report("digits", None)]


def test_removed_desired_cancels_a_running_job_first() -> None:
    assert plan({}, {}, {"digits": pkg().identity}, {}, {}, now=0).actions == [CancelInstall("digits")]


def test_unmanaged_tee_package_is_never_removed() -> None:
    have = {"other": Installed("other", "9", 1)}
    assert plan({}, have, {}, {}, {}, now=0).actions == []


def test_non_retryable_failure_waits_for_a_twin_change() -> None:
    want = pkg()
    failure = record_failure(None, want.identity, ErrorInfo("CPK_SIGNATURE_INVALID", "bad"), retryable=False,
                             now=0, backoff=Backoff())
    p = plan({"digits": want}, {}, {}, {"digits": failure}, {}, now=10_000)
    assert [type(a) for a in p.actions] == [Report]
    value = p.actions[0].value  # type: ignore[union-attr]
    assert value is not None and value.state is PackageState.FAILED and value.error is not None
    assert value.error.code == "CPK_SIGNATURE_INVALID"
    assert p.wake_at is None
    # a new version in the twin is a new request
    p2 = plan({"digits": pkg(version="1.0.1")}, {}, {}, {"digits": failure}, {}, now=1)
    assert p2.actions == [StartInstall(pkg(version="1.0.1"), 1)]


def test_retryable_failure_backs_off_then_retries_with_the_next_attempt_number() -> None:
    want = pkg()
    rng = random.Random(1)
    failure = record_failure(None, want.identity, ErrorInfo("KR_UNAVAILABLE", "down"), retryable=True,
                             now=100, backoff=Backoff(base_s=2, cap_s=60), rng=rng)
    assert failure.retry_at is not None and 101 <= failure.retry_at <= 102
    waiting = plan({"digits": want}, {}, {}, {"digits": failure}, {}, now=100.5)
    assert not any(isinstance(a, StartInstall) for a in waiting.actions)
    assert waiting.wake_at == failure.retry_at
    due = plan({"digits": want}, {}, {}, {"digits": failure}, {}, now=failure.retry_at)
    assert StartInstall(want, 2) in due.actions


def test_backoff_grows_and_is_capped() -> None:
    want = pkg()
    backoff = Backoff(base_s=1, cap_s=8)
    f = None
    delays = []
    for _ in range(8):
        f = record_failure(f, want.identity, ErrorInfo("X_UNAVAILABLE", ""), retryable=True, now=0,
                           backoff=backoff, rng=random.Random(0))
        assert f.retry_at is not None
        delays.append(f.retry_at)
    assert f is not None and f.attempts == 8
    assert delays[0] <= 1 and delays[3] > 4 - 0.001 and max(delays) <= 8


def test_failure_attempts_restart_for_a_new_identity() -> None:
    f1 = record_failure(None, pkg().identity, ErrorInfo("A", ""), retryable=True, now=0, backoff=Backoff())
    f2 = record_failure(f1, pkg(version="2").identity, ErrorInfo("A", ""), retryable=True, now=0, backoff=Backoff())
    assert f2.attempts == 1


def test_parallel_limit_is_respected() -> None:
    desired = {n: pkg(name=n) for n in ("a", "b", "c", "d")}
    p = plan(desired, {}, {"a": desired["a"].identity}, {}, {}, now=0, max_parallel=2)
    assert [a.package.name for a in p.actions if isinstance(a, StartInstall)] == ["b"]


def test_hostile_entries_are_reported_failed_and_do_not_disturb_the_installed_version() -> None:
    desired = parse_desired_packages({"packages": {
        "digits": {"version": "2", "url": "ftp://evil/x", "sha256": SHA, "size": 10},
        "../etc": {"version": "1", "url": "https://a/b", "sha256": SHA, "size": 10},
    }})
    have = {"digits": Installed("digits", "1.0.0", 1)}
    p = plan(desired, have, {}, {}, {"digits": installed_report("1.0.0")}, now=0)
    assert not any(isinstance(a, StartInstall | Uninstall) for a in p.actions)
    reports = {a.name: a.value for a in p.actions if isinstance(a, Report)}
    assert reports["digits"] is not None and reports["digits"].error is not None
    assert reports["digits"].error.code == "INSTALL_URL_SCHEME"
    assert reports["digits"].installed_version == "1.0.0"
    (label,) = [n for n in reports if n != "digits"]
    assert label.startswith("invalid-") and "." not in label and "/" not in label
    assert reports[label] is not None and reports[label].error.code == "INSTALL_INVALID_NAME"  # type: ignore[union-attr]


def test_a_malformed_packages_section_never_uninstalls_anything() -> None:
    good = parse_desired_packages({"packages": {"digits": pkg().to_twin()}})
    desired, last_good = effective_desired(good, {})
    assert desired == good == last_good
    bad = parse_desired_packages({"packages": ["not", "an", "object"]})
    desired, kept = effective_desired(bad, last_good)
    assert kept == last_good and desired["digits"] == pkg()
    have = {"digits": Installed("digits", "1.0.0", 1, SHA)}
    p = plan(desired, have, {}, {}, {"digits": installed_report("1.0.0")}, now=0)
    assert not any(isinstance(a, Uninstall) for a in p.actions)
    reports = {a.name: a.value for a in p.actions if isinstance(a, Report)}
    assert reports["_section"] is not None and reports["_section"].error is not None
    assert reports["_section"].error.code == "INSTALL_INVALID_DESIRED"


def test_invalid_desired_cancels_a_running_job() -> None:
    desired = parse_desired_packages({"packages": {"digits": {"version": 3}}})
    p = plan(desired, {}, {"digits": pkg().identity}, {}, {}, now=0)
    assert CancelInstall("digits") in p.actions


def test_held_package_is_not_reinstalled_until_desired_changes() -> None:
    want = pkg()
    p = plan({"digits": want}, {}, {}, {}, {}, now=0, held={"digits": want.identity})
    assert not any(isinstance(a, StartInstall) for a in p.actions)
    (report,) = p.actions
    assert isinstance(report, Report) and report.value is not None and report.value.error is not None
    assert report.value.error.code == "INSTALL_REMOVED_BY_METHOD"
    p2 = plan({"digits": pkg(version="3")}, {}, {}, {}, {}, now=0, held={"digits": want.identity})
    assert p2.actions == [StartInstall(pkg(version="3"), 1)]


def test_report_left_by_a_crash_mid_install_is_replaced() -> None:
    """After a restart the twin may still say `downloading`: the plan restarts the job."""
    want = pkg()
    stale = ReportedPackage(PackageState.DOWNLOADING, "1.0.0", sha256=SHA)
    p = plan({"digits": want}, {}, {}, {}, {"digits": stale}, now=0)
    assert p.actions == [StartInstall(want, 1)]
    # ...or, if the TEE finished before the crash, just reports installed
    p2 = plan({"digits": want}, {"digits": Installed("digits", "1.0.0", 2)}, {}, {}, {"digits": stale}, now=0)
    assert [type(a) for a in p2.actions] == [Report]
