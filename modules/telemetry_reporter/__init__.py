"""The telemetry reporter IoT Edge module: events and results in, metrics and alerts upstream.

Functional core: :mod:`.alerts` (which events are alerts), :mod:`.metrics` (window aggregation).
Durable state: :mod:`.store` (SQLite journal and outbox: nothing lost across restarts).
Imperative shell: :mod:`.service`, :mod:`.main`. The telemetry it sends is described by the IoT
Plug and Play (DTDL v2) model in ``dtdl/telemetry_reporter.json``.
"""
