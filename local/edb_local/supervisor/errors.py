"""Error codes of the supervisor (LOCAL_*).

One class; the code says which failure, as in the hub's errors: ``raise SupervisorError(msg, code=...)``.
"""

from __future__ import annotations

from edb.errors import LocalStackError


class SupervisorError(LocalStackError):
    code = "LOCAL_SUPERVISOR_ERROR"


STATE_MISMATCH = "LOCAL_STATE_MISMATCH"  # the state directory belongs to another stack configuration (device id)
ADDRESS_IN_USE = "LOCAL_ADDRESS_IN_USE"  # a port is taken by a process this stack did not start
COMPONENT_BLOCKED = "LOCAL_COMPONENT_BLOCKED"  # a component needs what another has not made yet
DEVICE_PROVISION = "LOCAL_DEVICE_PROVISION"  # `edb device provision` failed
DEVICE_REGISTRATION = "LOCAL_DEVICE_REGISTRATION"  # the hub refused or did not answer the registration
