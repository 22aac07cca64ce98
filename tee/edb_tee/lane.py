"""A connection's fast lane for repeated ``infer`` requests.

A runner sends the same request over and over: same session, command, model handle, input names,
dtypes and shapes; only the request id and the tensor data change. The general path parses each
body, builds a message and a call, and dispatches through the session's trusted app to the runner
command, which checks its parameters and calls the model manager. For a body whose metadata bytes
equal those of an ``infer`` request that took that path before (:class:`edb.tee.protocol.Layout`
compares every byte but the request id and the tensor data), every one of those steps has the same
outcome, except the model manager's own checks (the handle still exists and belongs to the caller,
the model is not being unloaded), which depend on state and are made on every call. So the lane
goes straight from the matched body to :meth:`ModelManager.infer` and encodes the outputs.

The lane is learnt from a request the general path decoded (only a runner session's ``infer`` with
a handle and uniquely named tensors qualifies) and forgotten when its session closes. Anything that
does not match goes the general way.
"""

from __future__ import annotations

import logging
from typing import Any

from edb.errors import EdbError
from edb.tee import errors as E
from edb.tee.commands import RunnerCmd
from edb.tee.protocol import (
    Layout,
    Limits,
    Message,
    MsgType,
    Op,
    Tensor,
    Value,
    encode,
    encode_fields,
    encode_tensors,
    error_message,
)
from edb_tee.models import ModelManager
from edb_tee.tas.base import Connection

log = logging.getLogger("edb_tee.server")


class InferLane:
    __slots__ = ("conn", "handle", "layout", "limits", "models", "owner", "session")

    def __init__(self, layout: Layout, handle: int, session: int, models: ModelManager, owner: int,
                 limits: Limits, conn: Connection) -> None:
        self.conn = conn  # its shared-memory region, if attached, takes large outputs
        self.layout = layout
        self.handle = handle
        self.session = session
        self.models = models
        self.owner = owner
        self.limits = limits

    @classmethod
    def learn(cls, layout: Layout | None, msg: Message, ta_name: str, models: ModelManager, owner: int,
              limits: Limits, conn: Connection | None = None) -> InferLane | None:
        """A lane for requests shaped like ``msg``, if it is a runner ``infer`` the general path
        would dispatch to the model manager (a handle, then uniquely named tensors)."""
        if (layout is None or ta_name != "runner" or msg.op != Op.INVOKE or msg.command != RunnerCmd.INFER
                or msg.type != MsgType.REQUEST or not msg.params or type(msg.params[0]) is not Value):
            return None
        names = [p.name for p in msg.params[1:] if type(p) is Tensor]
        if len(names) != len(msg.params) - 1 or len(set(names)) != len(names):
            return None
        return cls(layout, msg.params[0].a, msg.session, models, owner, limits, conn or Connection())

    def serve(self, body: memoryview) -> list[bytes | memoryview] | None:
        """The reply frame for a matching body, or None (then the general path takes it)."""
        layout = self.layout
        if not layout.matches(body):
            return None
        request_id = int.from_bytes(body[4:8], "little")
        try:
            out = self.models.infer(self.handle, self.owner, layout.arrays(body))
            region = self.conn.region
            if region is not None and _any_large(out, region.threshold):  # into the region (inputs are all inline)
                frame: list[bytes | memoryview] = encode_fields(
                    MsgType.RESPONSE, Op.INVOKE, request_id, self.session, RunnerCmd.INFER, 0,
                    region.place_outputs(out, 0), self.limits)
                return frame
            return encode_tensors(MsgType.RESPONSE, Op.INVOKE, request_id, self.session, RunnerCmd.INFER, b"", 0,
                                  list(out.items()), self.limits)
        except EdbError as exc:
            return encode(error_message(layout.message(body), exc.code, exc.message), self.limits)
        except Exception:
            log.exception("internal error in INVOKE command %d", RunnerCmd.INFER)
            return encode(error_message(layout.message(body), E.INTERNAL, "internal error in the TEE (see its log)"),
                          self.limits)


def _any_large(out: dict[str, Any], threshold: int) -> bool:
    for arr in out.values():  # noqa: SIM110 - no generator on the per-call path
        if arr.nbytes >= threshold:
            return True
    return False
