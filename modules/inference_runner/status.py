"""What the runner reports, and when (pure).

**The model status** (:func:`model_report`) is computed from what is true now, never patched step
by step, so no earlier event can outlive the state it described (a load failure of 2.0.0 stayed
``failed`` after the rollback to the 1.0.0 that was serving all along). ``state`` says what
serves:

- ``loading``: a version of the wanted model is being loaded (the previous one, if any, still
  answers until the swap); ``version`` is the one being loaded;
- ``serving``: ``name``/``version`` answer inputs;
- ``waiting``: nothing serves and nothing can be loaded (``error`` ``RUNNER_WAITING`` says why, when
  a model is wanted);
- ``failed``: nothing serves because the wanted version failed to load (``version`` null).

The last failed load is kept in ``lastLoadFailure`` (name, version, error, time) whatever serves,
until that version loads or another load fails.

**When to report** (:func:`report_wait`): a change of state or settings at once; the counters
(``stats``) no more often than the reporting interval (twin ``stats.reportIntervalSeconds``), and
only when they changed. At 10,000 devices a 2 s interval was 5,000 twin updates/s against IoT Hub's
250/s per S3 unit (docs/scale.md); the default of 60 s is 167/s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edb.schemas import ErrorInfo, LoadFailure, ModelReport, ModelState

WAITING_CODE = "RUNNER_WAITING"


@dataclass(frozen=True)
class Facts:
    """What is true of the runner's model now."""

    wanted: str | None                     # desired model.name (None: no model wanted)
    serving: tuple[str, str] | None        # (name, version) of the active model
    loading: str | None = None             # version of ``wanted`` being loaded now
    waiting: str | None = None             # why the last selection loads nothing (when nothing serves)
    failure: LoadFailure | None = None     # the last failed load, kept until that version loads


def model_report(facts: Facts, previous: ModelReport, now: str) -> ModelReport:
    """The reported ``model`` for ``facts``; ``since`` is kept from ``previous`` while the status
    (state, name, version, error) is the same."""
    failure = facts.failure
    if facts.loading is not None and facts.wanted is not None:
        report = ModelReport(facts.wanted, facts.loading, ModelState.LOADING, now, None, failure)
    elif facts.serving is not None:
        report = ModelReport(facts.serving[0], facts.serving[1], ModelState.SERVING, now, None, failure)
    elif facts.wanted is None:
        report = ModelReport(None, None, ModelState.WAITING, now, None, failure)
    elif facts.waiting is not None:
        report = ModelReport(facts.wanted, None, ModelState.WAITING, now, ErrorInfo(WAITING_CODE, facts.waiting),
                             failure)
    elif failure is not None and failure.name == facts.wanted:
        report = ModelReport(facts.wanted, None, ModelState.FAILED, now, failure.error, failure)
    else:
        report = ModelReport(facts.wanted, None, ModelState.WAITING, now, None, failure)
    if same_status(report, previous):
        return replace(report, since=previous.since)
    return report


def same_status(a: ModelReport, b: ModelReport) -> bool:
    return (a.state, a.name, a.version, a.error) == (b.state, b.name, b.version, b.error)


def failure_after_load(failure: LoadFailure | None, name: str, version: str) -> LoadFailure | None:
    """The failure record once ``name`` ``version`` has loaded: gone if it was about that version."""
    if failure is not None and failure.name == name and failure.version == version:
        return None
    return failure


#: the reporting interval of the counters, seconds: default, and the bounds a twin may choose within
DEFAULT_REPORT_INTERVAL_S = 60.0
MIN_REPORT_INTERVAL_S = 5.0
MAX_REPORT_INTERVAL_S = 3600.0


def report_wait(*, now: float, last_sent: float | None, urgent: bool, counters_changed: bool,
                interval_s: float) -> float | None:
    """Seconds until the next reported patch is due (0: now), or None when there is nothing to
    report (wait to be woken by a change). ``urgent``: the model status or a setting changed (or
    nothing was reported yet); ``counters_changed``: the stats differ from the last patch sent."""
    if urgent or last_sent is None:
        return 0.0
    if not counters_changed:
        return None
    return max(0.0, last_sent + interval_s - now)
