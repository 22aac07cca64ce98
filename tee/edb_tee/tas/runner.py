"""Runner trusted app: load / infer / unload, and the connection's shared-memory region. Tensors
arrive as views of the received frame (or of the region) and results leave as views of ONNX
Runtime's outputs (or are written into the region): no other copies in the TEE's user space."""

from __future__ import annotations

import os
from typing import Any

from edb import onnx_layout
from edb.errors import TeeError
from edb.tee.commands import LOAD_IN_PLACE, LOAD_PREPACK, RunnerCmd
from edb.tee.errors import BAD_PARAMETERS, SHM_BOUNDS, SHM_NOT_ATTACHED, UNKNOWN_HANDLE
from edb.tee.protocol import Fd, Param, ShmTensor, Tensor, Text, Value
from edb.tee.shm import inputs_end, open_region
from edb_tee.model_metadata import read as read_metadata
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
    region = c.conn.region
    snapshot_bytes = 0  # region inputs copied so far: never more than the region (ranges may overlap)
    for i in range(1, len(params)):
        p = params[i]
        if type(p) is Tensor:
            arr = p.array
        elif type(p) is ShmTensor:
            if region is None:
                raise TeeError("shared-memory tensor without an attached region", code=SHM_NOT_ATTACHED)
            # bounds-checked, then copied: ONNX Runtime must read the TEE's own snapshot. Kernels
            # validate then re-read their inputs (Gather checks every index, then reads it again to
            # copy): over shared pages the normal world could change an index between the two reads
            # and have TEE memory copied into the output
            snapshot_bytes += p.nbytes
            if snapshot_bytes > region.size:  # overlapping ranges: one region's worth of copies at most
                raise TeeError(f"shared-memory tensors of more than the region's {region.size} bytes in all",
                               code=SHM_BOUNDS)
            arr = region.snapshot(p)
        else:
            raise TeeError("infer inputs must be uniquely named tensors", code=BAD_PARAMETERS)
        if p.name in feeds:
            raise TeeError("infer inputs must be uniquely named tensors", code=BAD_PARAMETERS)
        feeds[p.name] = arr
    out = c.core.models.infer(params[0].a, c.peer.pid, feeds)
    if region is not None:  # outputs of at least the threshold go into the region, behind the inputs
        placed: list[Param] = region.place_outputs(out, inputs_end(params))
        return placed
    return [Tensor(name, arr) for name, arr in out.items()]


def attach_region(c: Call) -> list[Param]:
    """This connection's shared-memory region (replacing an earlier one): a memfd sealed against
    shrinking, within the size limit, checked before it is mapped (see :mod:`edb.tee.shm`)."""
    ref, threshold = c.expect(Fd, Value)
    if threshold.a < 1:
        raise TeeError("the region threshold must be at least 1 byte", code=BAD_PARAMETERS)
    fd = c.take_fd(ref)
    try:
        region = open_region(fd, threshold.a)
    finally:
        os.close(fd)  # the region keeps its own duplicate
    c.conn.close()
    c.conn.region = region
    return [Value(region.size)]


def model_metadata(c: Call) -> list[Param]:
    """The loaded model's producer, opsets and metadata_props (bounded), for the handle's owner."""
    (handle,) = c.expect(Value)
    model = c.core.models._get(handle.a, c.peer.pid)  # the same owner check as infer
    with model.lock:  # held like an inference, so an unload waits before the buffer goes away
        if model.active < 0:
            raise TeeError("model was unloaded", code=UNKNOWN_HANDLE)
        model.active += 1
    try:
        view = model.buffer.view()
        # the layout's graph section (no weights), or a plain ModelProto if a load path keeps one
        proto = onnx_layout.parse(view).graph if onnx_layout.is_layout(view) else view
        meta = read_metadata(proto, model.name, model.version)
        del proto, view
    finally:
        with model.lock:
            model.active -= 1
            if model.closing and not model.active:
                model.cond.notify_all()
    return json_blob(meta.to_json())


def unload(c: Call) -> list[Param]:
    (handle,) = c.expect(Value)
    c.core.models.unload(handle.a, c.peer.pid)
    return []


COMMANDS: dict[int, Handler] = {
    RunnerCmd.LOAD_MODEL: load_model,
    RunnerCmd.INFER: infer,
    RunnerCmd.UNLOAD: unload,
    RunnerCmd.ATTACH_REGION: attach_region,
    RunnerCmd.MODEL_METADATA: model_metadata,
}
