"""Error codes of the workload API stand-in (LOCAL_WORKLOAD_*), each with its HTTP status."""

from __future__ import annotations

from edb.errors import LocalStackError


class WorkloadError(LocalStackError):
    code = "LOCAL_WORKLOAD_ERROR"
    http_status = 500


class BadRequest(WorkloadError):
    code = "LOCAL_WORKLOAD_BAD_REQUEST"
    http_status = 400


class WrongModule(WorkloadError):
    """A module asked through its socket for another module's signature."""

    code = "LOCAL_WORKLOAD_WRONG_MODULE"
    http_status = 403


class UnknownModule(WorkloadError):
    code = "LOCAL_WORKLOAD_UNKNOWN_MODULE"
    http_status = 404


class GenerationMismatch(WorkloadError):
    """The generation id is not the module identity's current one (a stale or forged caller)."""

    code = "LOCAL_WORKLOAD_GENERATION_MISMATCH"
    http_status = 403


class SignRefused(WorkloadError):
    """The data is not a SAS string-to-sign for the calling module's own resource URI."""

    code = "LOCAL_WORKLOAD_SIGN_REFUSED"
    http_status = 403


class PeerRefused(WorkloadError):
    """The connecting process runs as a user the stand-in does not serve."""

    code = "LOCAL_WORKLOAD_PEER_REFUSED"
    http_status = 403
