"""How one batch's requests become TEE calls and answers: the runner's inference half.

:class:`InferenceMixin` is mixed into :class:`.service.RunnerService` (which owns the attributes
declared below); it binds each request to the serving model's signature, stacks what can share a
call (:mod:`.plan`), splits a batch whose outputs would not fit, calls the TEE and turns its outputs
into per-request answers (:mod:`.outputs`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edb.errors import EdbError
from edb.schemas import ErrorInfo, InferenceResult, ModelRef
from inference_runner import plan
from inference_runner.decode import DecodedInput
from inference_runner.delivery import result_of
from inference_runner.model_slot import Loaded, ModelSlot
from inference_runner.outputs import Answer, OutputError, RowMismatch, present, split_arrays
from inference_runner.signature import TENSOR_TOO_LARGE, Limits, Signature, from_handle
from inference_runner.stats import LatencyStats

log = logging.getLogger("inference_runner")
#: TEE refusals that mean the call's outputs did not fit a frame or the region: split and retry
_OUTPUT_TOO_LARGE = frozenset({"TEE_FRAME_TOO_LARGE", "TEE_SHM_TOO_LARGE"})
#: inputs of this many bytes in one call can be what a frame refusal is about (the TEE's frame is
#: 64 MiB and the client's shared-memory region 32 MiB by default)
_INPUT_FRAME_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Reply:
    """What an Open Inference Protocol caller gets back for its request."""

    model: ModelRef | None
    answer: Answer | None
    error: ErrorInfo | None


@dataclass(frozen=True)
class Request:
    request_id: str
    decoded: DecodedInput | None
    error: ErrorInfo | None
    received: float
    reply: asyncio.Future[Reply] | None = None  # an OIP request: its answer goes back to the HTTP caller
    npz: bool = False  # the input asked for an .npz answer

    @property
    def rows(self) -> int:
        return self.decoded.rows if self.decoded is not None else 1


class InferenceMixin:
    tee: Any
    clock: Callable[[], float]
    limits: Limits
    slot: ModelSlot[Any]
    stats: LatencyStats
    split_batches: int
    _row_bytes: dict[tuple[str, str, plan.Key], float]
    _max_rows: dict[tuple[str, str, plan.Key], int]
    _signatures: dict[int, tuple[Any, Signature]]

    def request_selection(self) -> None:
        raise NotImplementedError

    def serving(self) -> tuple[Loaded[Any], Signature] | None:
        """The serving model and its signature (for the OIP's metadata and checks)."""
        model = self.slot.active
        if model is None:
            return None
        return model, self.signature(model)

    def signature(self, model: Loaded[Any]) -> Signature:
        cached = self._signatures.get(id(model.handle))
        if cached is not None and cached[0] is model.handle:  # (an id can be reused once a handle is gone)
            return cached[1]
        if len(self._signatures) > 16:
            self._signatures.clear()
        sig = from_handle(model.handle)
        self._signatures[id(model.handle)] = (model.handle, sig)
        return sig

    async def _infer(self, model: Loaded[Any], signature: Signature,
                     group: list[tuple[Request, Mapping[str, np.ndarray]]], *,
                     batch_size: int) -> dict[str, tuple[InferenceResult, Answer | None]]:
        """One TEE call for ``group`` (stacked), split first where its outputs would not fit."""
        ref = ModelRef(model.name, model.version)
        rows = [plan.rows_of(feeds, signature.batchable) for _, feeds in group]
        key = (model.name, model.version, plan.group_key(group[0][1]))
        static_bytes, largest = plan.static_row_bytes(signature)
        row_bytes = self._row_bytes.get(key, static_bytes)
        limit = self.limits.max_output_bytes
        if len(group) > 1:
            parts = plan.chunks(rows, row_bytes, limit, self._max_rows.get(key))
            if len(parts) > 1:
                self.split_batches += 1
                results: dict[str, tuple[InferenceResult, Answer | None]] = {}
                for part in parts:
                    results.update(await self._infer(model, signature, [group[i] for i in part],
                                                     batch_size=batch_size))
                return results
        elif static_bytes is not None and rows[0] * static_bytes > limit:
            return self._fail(group, ref, ErrorInfo(TENSOR_TOO_LARGE, (
                f"output {str(largest)[:60]!r}: this input's outputs would be {rows[0] * static_bytes} bytes, above "
                f"the runner's limit of {limit} (limits.maxOutputBytes); send fewer rows")))
        stacked = plan.stack([feeds for _, feeds in group])
        try:
            outputs = await asyncio.to_thread(self.tee.infer, model.handle, stacked)
        except EdbError as exc:
            if exc.code in _OUTPUT_TOO_LARGE and len(group) > 1:  # split in halves and try again
                self.split_batches += 1
                if len(self._max_rows) > 256:
                    self._max_rows.clear()
                self._max_rows[key] = min(self._max_rows.get(key, sum(rows)), max(1, sum(rows) // 2))
                half = len(group) // 2
                first = await self._infer(model, signature, group[:half], batch_size=batch_size)
                return first | await self._infer(model, signature, group[half:], batch_size=batch_size)
            sent = sum(int(a.nbytes) for a in stacked.values())
            if exc.code in _OUTPUT_TOO_LARGE and sent >= _INPUT_FRAME_BYTES:  # the request itself did not fit
                name = max(stacked, key=lambda n: int(stacked[n].nbytes))
                error = ErrorInfo(TENSOR_TOO_LARGE, f"input {name[:60]!r}: {sent} bytes of inputs do not fit the "
                                                    f"TEE's request ({exc.code}); lower limits.maxInputBytes")
            elif exc.code in _OUTPUT_TOO_LARGE:
                names = ", ".join(repr(o.name[:40]) for o in signature.outputs[:4])
                error = ErrorInfo(TENSOR_TOO_LARGE, f"output(s) {names}: this input's outputs do not fit the TEE's "
                                                    f"answer ({exc.code}); send fewer rows or a smaller input")
            else:
                error = ErrorInfo.from_exception(exc)
            if exc.code in ("TEE_HANDLE_STALE", "TEE_UNKNOWN_HANDLE"):
                self.request_selection()
            return self._fail(group, ref, error)
        except Exception as exc:  # a transport bug or a broken reply: these inputs fail, the runner goes on
            log.warning("inference failed unexpectedly (%s)", type(exc).__name__)
            return self._fail(group, ref, ErrorInfo("RUNNER_INFER_FAILED", f"inference failed ({type(exc).__name__})"))
        try:
            parts_out = split_arrays(outputs, rows)
        except RowMismatch:  # (never for a single input: its outputs are not split)
            # the outputs do not have one row per input row (a model that aggregates its batch):
            # answer each input from its own call
            results = {}
            for item in group:
                results.update(await self._infer(model, signature, [item], batch_size=batch_size))
            return results
        except OutputError as exc:
            return self._fail(group, ref, ErrorInfo.from_exception(exc))
        total_rows = sum(rows)
        self._learn(key, sum(int(getattr(a, "nbytes", 0)) for a in outputs.values()) / max(1, total_rows))
        done = self.clock()
        results = {}
        for (request, _), arrays in zip(group, parts_out, strict=True):
            answer = Answer(arrays=arrays) if request.reply is not None else present(arrays)
            if isinstance(answer, ErrorInfo):
                results[request.request_id] = (self._error_result(request, answer, ref), None)
            else:
                results[request.request_id] = (self._answer_result(request, answer, ref, done, batch_size), answer)
        return results

    def _learn(self, key: tuple[str, str, plan.Key], row_bytes: float) -> None:
        if len(self._row_bytes) > 256:
            self._row_bytes.clear()
        self._row_bytes[key] = max(row_bytes, self._row_bytes.get(key, 0.0))

    def _fail(self, group: list[tuple[Request, Mapping[str, np.ndarray]]], ref: ModelRef,
              error: ErrorInfo) -> dict[str, tuple[InferenceResult, Answer | None]]:
        return {r.request_id: (self._error_result(r, error, ref), None) for r, _ in group}

    def _answer_result(self, request: Request, answer: Answer, ref: ModelRef, done: float,
                       batch_size: int) -> InferenceResult:
        latency_ms = (done - request.received) * 1000
        self.stats.record(latency_ms)
        base = InferenceResult(request.request_id, ref, None,
                               expected=request.decoded.label if request.decoded is not None else None,
                               latency_ms=latency_ms, batch_size=batch_size)
        return result_of(base, answer) if request.reply is None else \
            InferenceResult(request.request_id, ref, None, expected=base.expected, latency_ms=latency_ms,
                            batch_size=batch_size, tensors=answer.tensors)

    def _error_result(self, request: Request, error: ErrorInfo, ref: ModelRef | None) -> InferenceResult:
        latency_ms = (self.clock() - request.received) * 1000
        self.stats.record(latency_ms, ok=False)
        return InferenceResult(request.request_id, ref, None, error=error, latency_ms=latency_ms)
