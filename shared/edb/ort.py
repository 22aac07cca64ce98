"""ONNX Runtime, imported with its telemetry switched off: every import of it in this project goes
through here (ruff's banned-api rule TID251 refuses a direct ``import onnxruntime``).

onnxruntime 1.29+ on Linux carries a telemetry uploader (1DS, to
``mobile.events.data.microsoft.com``): at load it writes a device id and an event store under
``~/.cache/Microsoft/DeveloperTools/.onnxruntime/`` and sends a process-information event (CPU
model, memory, process name, that id). Measured here with 1.32.0: a fresh ``$HOME`` gets
``deviceid`` and ``onnxruntime.db`` from a bare ``import onnxruntime``; with
``ORT_DISABLE_TELEMETRY=1`` it gets nothing. The TEE and the build pipeline must not open a
connection nobody asked for, nor leave an identifier behind, and the switch is read when the
library loads, so it is set here, unconditionally, before the first import (``CI`` set also
silences it, which is why test runs in CI never showed it). The images set it too (defence in depth).
"""

from __future__ import annotations

import os

TELEMETRY_SWITCH = "ORT_DISABLE_TELEMETRY"
os.environ[TELEMETRY_SWITCH] = "1"

import onnxruntime  # noqa: E402, TID251 - the one place it is imported, after the switch

__all__ = ["TELEMETRY_SWITCH", "onnxruntime"]
