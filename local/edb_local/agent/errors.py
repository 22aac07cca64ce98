"""Error codes of the edge agent stand-in (LOCAL_AGENT_*)."""

from __future__ import annotations

from edb.errors import LocalStackError


class AgentError(LocalStackError):
    """The edge agent could not apply a deployment or run a module."""

    code = "LOCAL_AGENT_ERROR"


class DeploymentError(AgentError):
    """The `$edgeAgent` desired properties are not a deployment this agent can apply.

    ``status_code`` is the `lastDesiredStatus.code` IoT Edge's edgeAgent reports for the same
    failure: 400 (invalid configuration), 412 (unsupported schema version), 417 (empty configuration).
    """

    code = "LOCAL_AGENT_INVALID_DEPLOYMENT"

    def __init__(self, message: str, *, code: str | None = None, status_code: int = 400) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code


class ImageNotMappedError(DeploymentError):
    """A module's image names no entry point this agent knows (see ``module_map``)."""

    code = "LOCAL_AGENT_IMAGE_NOT_MAPPED"
