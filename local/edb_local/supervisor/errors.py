"""Error codes of the supervisor (LOCAL_*)."""

from __future__ import annotations

from edb.errors import LocalStackError


class SupervisorError(LocalStackError):
    code = "LOCAL_SUPERVISOR_ERROR"


class StateMismatch(SupervisorError):
    """The state directory belongs to a different stack configuration (e.g. another device id)."""

    code = "LOCAL_STATE_MISMATCH"


class AddressInUse(SupervisorError):
    code = "LOCAL_ADDRESS_IN_USE"


class ComponentUnhealthy(SupervisorError):
    code = "LOCAL_COMPONENT_UNHEALTHY"


class ComponentNotInstalled(SupervisorError):
    code = "LOCAL_COMPONENT_NOT_INSTALLED"
