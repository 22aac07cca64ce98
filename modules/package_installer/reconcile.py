"""The installer's decisions: desired vs installed vs in flight -> actions. No I/O at all.

The shell calls :func:`plan` whenever anything changes (a twin patch, a job finished, a timer) and
executes the actions it returns. Because the plan is recomputed from the whole state each time, the
installer converges after restarts, reconnects and missed patches: it never depends on having
seen a particular event.

Ownership rule: the installer only removes packages it manages, i.e. names that appear in its
desired or reported twin section. A package installed in the TEE by other means is left alone, so
an empty twin can never wipe a device.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from edb.schemas.common import ErrorInfo, iso_utc
from edb.schemas.packages import DesiredPackage, InvalidDesired, PackageState, ReportedPackage
from package_installer.backoff import Backoff

Identity = tuple[str, str, str, int]


@dataclass(frozen=True)
class Installed:
    """What the TEE says is installed under a name."""

    name: str
    version: str
    security_version: int
    sha256: str | None = None
    key_flow: str | None = None  # KEY_FLOW_LEGACY for a v1 package installed with the legacy flow


@dataclass(frozen=True)
class Failure:
    """The last failed attempt for one desired identity."""

    identity: Identity
    error: ErrorInfo
    retryable: bool
    attempts: int
    retry_at: float | None  # monotonic seconds; None: wait for a twin change or the retry method
    security_version: int | None = None


@dataclass(frozen=True)
class StartInstall:
    package: DesiredPackage
    attempt: int


@dataclass(frozen=True)
class CancelInstall:
    name: str


@dataclass(frozen=True)
class Uninstall:
    name: str


@dataclass(frozen=True)
class Report:
    name: str
    value: ReportedPackage | None  # None deletes the reported entry


Action = StartInstall | CancelInstall | Uninstall | Report


@dataclass(frozen=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    #: Earliest monotonic time at which planning again could yield something new (a backoff expiry).
    wake_at: float | None = None


SECTION = "_section"  # the label parse_desired_packages reports a malformed ``packages`` section under


def effective_desired(
    parsed: Mapping[str, DesiredPackage | InvalidDesired],
    last_good: Mapping[str, DesiredPackage | InvalidDesired],
) -> tuple[dict[str, DesiredPackage | InvalidDesired], dict[str, DesiredPackage | InvalidDesired]]:
    """What to plan with, and the new last good section.

    A ``packages`` section that is not an object at all says nothing about individual packages:
    acting on it would uninstall everything. Plan with the last good section instead (and report
    the bad one under ``_section``).
    """
    if SECTION in parsed:
        return {**last_good, SECTION: parsed[SECTION]}, dict(last_good)
    return dict(parsed), dict(parsed)


def record_failure(
    previous: Failure | None,
    identity: Identity,
    error: ErrorInfo,
    *,
    retryable: bool,
    now: float,
    backoff: Backoff,
    rng: random.Random | None = None,
    security_version: int | None = None,
    retry_after: float | None = None,
) -> Failure:
    """The failure state after one more failed attempt (attempts count per identity).

    ``retry_after``: the server's Retry-After (the key release service's 429/503). The device waits
    at least that long, plus up to half of it again at random, so a herd told "1 s" does not come
    back within the same instant (and never sooner than its own backoff)."""
    attempts = previous.attempts + 1 if previous is not None and previous.identity == identity else 1
    retry_at = None
    if retryable:
        delay = backoff.delay(attempts, rng)
        if retry_after is not None and retry_after > 0:
            source = rng or random.SystemRandom()
            delay = max(delay, min(retry_after, 3600.0) * (1.0 + 0.5 * source.random()))
        retry_at = now + delay
    return Failure(identity, error, retryable, attempts, retry_at, security_version)


def _same_report(a: ReportedPackage | None, b: ReportedPackage | None) -> bool:
    """Equal apart from the timestamp (so a re-plan does not rewrite the twin every time)."""
    if a is None or b is None:
        return a is b
    return replace(a, updated_at="") == replace(b, updated_at="")


def _installed_matches(installed: Installed | None, package: DesiredPackage) -> bool:
    """Same version and, when the TEE knows it, the same package file (a re-published version differs)."""
    if installed is None or installed.version != package.version:
        return False
    return not installed.sha256 or installed.sha256 == package.sha256


def plan(
    desired: Mapping[str, DesiredPackage | InvalidDesired],
    installed: Mapping[str, Installed],
    in_flight: Mapping[str, Identity],
    failures: Mapping[str, Failure],
    reported: Mapping[str, ReportedPackage],
    *,
    now: float,
    max_parallel: int = 2,
    held: Mapping[str, Identity] | None = None,
) -> Plan:
    """Decide. ``held`` maps names the ``uninstall`` method removed to the identity it removed."""
    held = held or {}
    actions: list[Action] = []
    wake_at: float | None = None
    running = len(in_flight)

    def report(name: str, value: ReportedPackage | None) -> None:
        if not _same_report(reported.get(name), value):
            actions.append(Report(name, value))

    def wake(at: float) -> None:
        nonlocal wake_at
        wake_at = at if wake_at is None else min(wake_at, at)

    names = sorted(set(desired) | set(in_flight) | set(reported) | set(failures))
    for name in names:
        want = desired.get(name)
        have = installed.get(name)
        have_version = have.version if have else None
        flying = in_flight.get(name)

        if isinstance(want, InvalidDesired):
            if flying is not None:
                actions.append(CancelInstall(name))
            report(name, ReportedPackage(PackageState.FAILED, None, error=want.error, installed_version=have_version))
            continue

        if want is None:
            if flying is not None:
                actions.append(CancelInstall(name))
            elif have is not None:
                actions.append(Uninstall(name))
            else:
                report(name, None)
            continue

        if flying is not None:
            if flying != want.identity:
                actions.append(CancelInstall(name))  # restarted with the new identity once cancelled
            continue  # the running job reports its own progress

        if _installed_matches(have, want):
            assert have is not None
            report(name, ReportedPackage(PackageState.INSTALLED, have.version, have.security_version, want.sha256,
                                         installed_version=have.version, key_flow=have.key_flow))
            continue

        if held.get(name) == want.identity:
            report(name, ReportedPackage(
                PackageState.FAILED, want.version, sha256=want.sha256,
                error=ErrorInfo("INSTALL_REMOVED_BY_METHOD",
                                "removed by the uninstall method; change desired or call retry to reinstall"),
                installed_version=have_version))
            continue

        failure = failures.get(name)
        if failure is not None and failure.identity == want.identity:
            report(name, ReportedPackage(PackageState.FAILED, want.version, failure.security_version, want.sha256,
                                         error=failure.error, installed_version=have_version,
                                         attempts=failure.attempts))
            if failure.retry_at is None:
                continue
            if failure.retry_at > now:
                wake(failure.retry_at)
                continue
            attempt = failure.attempts + 1
        else:
            attempt = 1

        if running >= max_parallel:
            continue  # a finishing job triggers the next plan
        running += 1
        actions.append(StartInstall(want, attempt))
    return Plan(actions, wake_at)


def initial_report(package: DesiredPackage, state: PackageState, *, installed_version: str | None,
                   security_version: int | None = None, attempts: int = 1) -> ReportedPackage:
    """What a running job reports at each state transition."""
    return ReportedPackage(state, package.version, security_version, package.sha256, None, iso_utc(),
                           installed_version, attempts)
