"""Hypothesis settings of the fuzz tests (issue 13 item 12).

``make test`` runs them briefly and reproducibly: ``derandomize=True`` (the same examples every run,
chosen from the test's own source) and a bounded example count, no example database. ``make fuzz``
sets ``EDB_FUZZ=1`` for a long randomised run (``EDB_FUZZ_EXAMPLES`` examples per test, 20000 by
default) that keeps failures in ``.hypothesis/`` so they replay first next time.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_QUICK = settings(derandomize=True, max_examples=int(os.environ.get("EDB_FUZZ_QUICK_EXAMPLES", "150")),
                  deadline=None, database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_LONG = settings(derandomize=False, max_examples=int(os.environ.get("EDB_FUZZ_EXAMPLES", "20000")), deadline=None,
                 print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: decorate every fuzz test with this
FUZZ = _LONG if os.environ.get("EDB_FUZZ") == "1" else _QUICK
