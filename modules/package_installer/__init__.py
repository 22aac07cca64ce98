"""The package installer IoT Edge module: a reconcile loop from desired package pointers to TEE installs.

Functional core: :mod:`.reconcile` (what to do), :mod:`.sources` (where a package may come from),
:mod:`.backoff`. Imperative shell: :mod:`.downloader`, :mod:`.pipeline` (one install job),
:mod:`.service` (the loop, twin and methods), :mod:`.main` (the process entry point).
"""
