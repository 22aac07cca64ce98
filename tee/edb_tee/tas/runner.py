"""Runner trusted app: load / infer / unload. Tensors arrive as views of the received frame and
results leave as views of ONNX Runtime's outputs: no copies in the TEE's user space."""

from __future__ import annotations

from typing import Any

from edb.errors import TeeError
from edb.tee.commands import LOAD_IN_PLACE, LOAD_PREPACK, RunnerCmd
from edb.tee.errors import BAD_PARAMETERS
from edb.tee.protocol import Param, Tensor, Text, Value
from edb_tee.tas.base import Call, Handler, json_blob


def load_model(c: Call) -> list[Param]:
    name, flags = c.expect(Text, Value)
    if flags.a & ~(LOAD_PREPACK | LOAD_IN_PLACE) or flags.a == LOAD_PREPACK | LOAD_IN_PLACE:
        raise TeeError("unknown or contradictory load flags", code=BAD_PARAMETERS)
    prepack = True if flags.a & LOAD_PREPACK else False if flags.a & LOAD_IN_PLACE else None
    handle = c.core.load_model(name.text, c.peer.pid, prepack=prepack)
    return json_blob(handle.to_json())


def infer(c: Call) -> list[Param]:
    params = c.params
    if not params or type(params[0]) is not Value:
        raise TeeError("infer takes a handle then tensors", code=BAD_PARAMETERS)
    feeds: dict[str, Any] = {}
    for i in range(1, len(params)):
        p = params[i]
        if type(p) is not Tensor or p.name in feeds:
            raise TeeError("infer inputs must be uniquely named tensors", code=BAD_PARAMETERS)
        feeds[p.name] = p.array
    out = c.core.models.infer(params[0].a, c.peer.pid, feeds)
    return [Tensor(name, arr) for name, arr in out.items()]


def unload(c: Call) -> list[Param]:
    (handle,) = c.expect(Value)
    c.core.models.unload(handle.a, c.peer.pid)
    return []


COMMANDS: dict[int, Handler] = {
    RunnerCmd.LOAD_MODEL: load_model,
    RunnerCmd.INFER: infer,
    RunnerCmd.UNLOAD: unload,
}
