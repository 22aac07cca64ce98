"""Error codes of the workload API stand-in (LOCAL_WORKLOAD_*), each with its HTTP status.

One class; the code says which refusal and ``HTTP_STATUS`` its answer's status (the key release
service's codes work the same way): ``raise WorkloadError(msg, code=SIGN_REFUSED)``.
"""

from __future__ import annotations

from edb.errors import LocalStackError

BAD_REQUEST = "LOCAL_WORKLOAD_BAD_REQUEST"
WRONG_MODULE = "LOCAL_WORKLOAD_WRONG_MODULE"  # a module asked through its socket for another module's signature
UNKNOWN_MODULE = "LOCAL_WORKLOAD_UNKNOWN_MODULE"
GENERATION_MISMATCH = "LOCAL_WORKLOAD_GENERATION_MISMATCH"  # not the identity's current one: a stale or forged caller
SIGN_REFUSED = "LOCAL_WORKLOAD_SIGN_REFUSED"  # not a SAS string-to-sign for the calling module's own resource URI
PEER_REFUSED = "LOCAL_WORKLOAD_PEER_REFUSED"  # the connecting process runs as a user the stand-in does not serve
SOCKET_DIR = "LOCAL_WORKLOAD_SOCKET_DIR"  # the socket directory is not ours alone (start-up, not an answer)

HTTP_STATUS: dict[str, int] = {
    BAD_REQUEST: 400,
    WRONG_MODULE: 403, GENERATION_MISMATCH: 403, SIGN_REFUSED: 403, PEER_REFUSED: 403,
    UNKNOWN_MODULE: 404,
}


class WorkloadError(LocalStackError):
    code = "LOCAL_WORKLOAD_ERROR"

    @property
    def http_status(self) -> int:
        """The status of the answer refusing the request: 500 for a code not in ``HTTP_STATUS``."""
        return HTTP_STATUS.get(self.code, 500)
