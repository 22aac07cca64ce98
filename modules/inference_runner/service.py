"""The runner's imperative shell: inputs in, batches through the TEE, results out, hot swaps.

Decisions live in the pure helpers (:mod:`.batching`, :mod:`.model_slot`, :mod:`.selection`);
this file wires them to the module client and the TEE client. Every input message gets exactly
one result message (an answer, or an error result with a code), carrying the id of the message it
answers and the model version that produced it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edb.errors import EdbError
from edb.schemas import (
    CONTENT_ENCODING_UTF8,
    CONTENT_TYPE_JSON,
    BatchingSettings,
    ErrorInfo,
    EventKind,
    InferenceResult,
    MessageError,
    MessageType,
    ModelRef,
    ModelReport,
    ModelSpec,
    ModelState,
    ModuleEvent,
    application_properties,
    apply_desired_patch,
    decode_json,
    desired_from_twin,
    encode_json,
    iso_utc,
    parse_batching,
    parse_model_spec,
)
from edb.schemas.messages import MAX_MESSAGE_BYTES
from inference_runner import endpoints
from inference_runner.batching import Batcher, Pending, RecentIds
from inference_runner.decoding import DecodedInput, InputError, decode_input
from inference_runner.model_slot import Loaded, ModelSlot
from inference_runner.outputs import Answer, OutputError, RowMismatch, split_answers
from inference_runner.selection import decide
from inference_runner.stats import LatencyStats

log = logging.getLogger("inference_runner")
SOURCE = "inference_runner"
#: A batch failed in a way no narrower handler foresaw (a bug): its inputs are answered with this.
BATCH_FAILED = "RUNNER_INTERNAL"
#: A loop the runner needs stopped for good: reported, then the process exits non-zero.
LOOP_FAILED = "RUNNER_LOOP_FAILED"
#: Room left for the message's properties: the SDK counts them in its 256 KB check as well.
RESULT_BODY_LIMIT = MAX_MESSAGE_BYTES - 4096


class RunnerFailed(EdbError):
    """The runner cannot continue (one of its loops ended); ``main`` exits non-zero so the edge
    agent's restartPolicy applies."""

    code = LOOP_FAILED


@dataclass(frozen=True)
class Request:
    request_id: str
    decoded: DecodedInput | None
    error: ErrorInfo | None
    received: float


class RunnerService:
    def __init__(self, client: Any, tee: Any, *, check_interval_s: float = 30.0,
                 report_interval_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.tee = tee
        self.clock = clock
        self.check_interval_s = check_interval_s
        self.report_interval_s = report_interval_s
        self.desired_doc: dict[str, Any] = {}
        self.spec: ModelSpec | None = None
        self.desired_error: ErrorInfo | None = None
        self.batching = BatchingSettings()
        self.batcher: Batcher[Request] = Batcher(self.batching.max_batch, self.batching.max_latency_ms / 1000)
        self.slot: ModelSlot[Any] = ModelSlot()
        self.recent = RecentIds()
        self.stats = LatencyStats()
        self.duplicates = 0
        self.failed_batches = 0
        self.report = ModelReport(None, None, ModelState.WAITING, iso_utc())
        self._arrived = asyncio.Event()
        self._select_lock = asyncio.Lock()
        self._select_wanted = asyncio.Event()
        self._report_dirty = True
        self._report_now = asyncio.Event()
        self._stopping = False

    # -- desired -----------------------------------------------------------------------------------
    async def load_twin(self) -> None:
        self.desired_doc = desired_from_twin(await self.client.get_twin())
        self._apply_desired()

    async def on_desired_patch(self, patch: Mapping[str, Any]) -> None:
        self.desired_doc = apply_desired_patch(self.desired_doc, patch)
        self._apply_desired()

    def _apply_desired(self) -> None:
        spec = parse_model_spec(self.desired_doc.get("model"))
        batching = parse_batching(self.desired_doc.get("batching"))
        errors = [e for e in (spec, batching) if isinstance(e, ErrorInfo)]
        self.desired_error = errors[0] if errors else None
        if not isinstance(spec, ErrorInfo):
            self.spec = spec
        if isinstance(batching, BatchingSettings):
            self.batching = batching
            self.batcher.configure(batching.max_batch, batching.max_latency_ms / 1000)
        self._report_dirty = True
        self.request_selection()

    def request_selection(self) -> None:
        self._select_wanted.set()

    # -- inputs --------------------------------------------------------------------------------------
    async def on_message(self, message: Any) -> None:
        input_name = getattr(message, "input_name", None)
        if input_name == endpoints.INPUT_PACKAGES:
            self._on_package_notification(message)
            return
        if input_name != endpoints.INPUT_FRAMES:
            log.warning("message on unknown input %r ignored", input_name)
            return
        # (a lone surrogate would make the answer unencodable as UTF-8: the id is made printable first)
        request_id = str(message.message_id or f"unidentified-{uuid.uuid4()}")[:128] \
            .encode("utf-8", "backslashreplace").decode("utf-8")
        if self.recent.seen(request_id):
            self.duplicates += 1  # edgeHub redelivered it: it was answered already
            return
        received = self.clock()
        try:
            decoded = decode_input(message.data, getattr(message, "content_type", None), self._features())
            label = (getattr(message, "custom_properties", None) or {}).get("label")
            if decoded.label is None and isinstance(label, str) and label.isdigit() and len(label) < 6:
                decoded = DecodedInput(decoded.tensor, int(label))  # binary inputs carry it as a property
            request = Request(request_id, decoded, None, received)
        except InputError as exc:
            request = Request(request_id, None, ErrorInfo.from_exception(exc), received)
        except Exception as exc:  # the message was acknowledged to edgeHub: it must still get an answer
            log.warning("decoding input %s failed unexpectedly (%s)", request_id, type(exc).__name__)
            request = Request(request_id, None, ErrorInfo("RUNNER_BAD_INPUT", f"undecodable input "
                                                          f"({type(exc).__name__})"), received)
        rows = request.decoded.tensor.shape[0] if request.decoded is not None else 1
        self.batcher.add(request, rows, received)
        self._arrived.set()

    def _on_package_notification(self, message: Any) -> None:
        try:
            event = ModuleEvent.from_json(decode_json(message.data))
        except MessageError:
            return
        if self.spec is not None and event.package == self.spec.name:
            self.request_selection()

    def _features(self) -> int | None:
        model = self.slot.active
        if model is None:
            return None
        handle = model.handle
        try:
            shape = handle.inputs[0].shape
            last = shape[-1]
            return last if isinstance(last, int) and last > 0 else None
        except (AttributeError, IndexError, TypeError):
            return None

    # -- batches -------------------------------------------------------------------------------------
    async def batch_loop(self) -> None:
        while True:
            if not len(self.batcher):
                if self._stopping:
                    return  # everything received has been answered
                self._arrived.clear()
                await self._arrived.wait()
                continue
            deadline = self.batcher.deadline()
            now = self.clock()
            if not self._stopping and not self.batcher.ready(now) and deadline is not None:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), timeout=max(0.0, deadline - now))
                if not self.batcher.ready(self.clock()):
                    continue
            await self.serve_guarded(self.batcher.take())

    async def serve_guarded(self, batch: list[Pending[Request]]) -> None:
        """:meth:`serve`, and if it fails unexpectedly, an error answer for every input of the batch
        not answered yet: one bad batch never stops the loop nor leaves an input unanswered."""
        answered: set[str] = set()
        try:
            await self.serve(batch, answered)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed_batches += 1
            log.exception("serving a batch of %d input(s) failed; answering them with %s", len(batch), BATCH_FAILED)
            error = ErrorInfo(BATCH_FAILED, f"the batch failed ({type(exc).__name__})")
            for pending in batch:
                if pending.item.request_id not in answered:
                    answered.add(pending.item.request_id)
                    await self._send_result(self._error_result(pending.item, error, None))

    async def serve(self, batch: list[Pending[Request]], answered: set[str] | None = None) -> None:
        requests = [p.item for p in batch]
        answers: dict[str, InferenceResult] = {}
        for request in requests:
            if request.error is not None:
                answers[request.request_id] = self._error_result(request, request.error, None)
        valid = [r for r in requests if r.decoded is not None]
        if valid:
            lease = self.slot.acquire()
            if lease is None:
                error = ErrorInfo("RUNNER_NO_MODEL", "no model version is serving yet")
                for request in valid:
                    answers[request.request_id] = self._error_result(request, error, None)
            else:
                try:
                    # inputs of different widths (a model with a dynamic feature dimension) cannot be
                    # stacked: one TEE call per width, in arrival order
                    for group in _by_width(valid):  # (a fresh list each: _infer may shorten it)
                        answers.update(await self._infer(lease, group, batch_size=len(valid)))
                finally:
                    retired = self.slot.release(lease)
                    await self._unload(retired)
        self.stats.batches += 1
        for request in requests:  # in arrival order
            await self._send_result(answers[request.request_id])
            if answered is not None:
                answered.add(request.request_id)

    async def _infer(self, model: Loaded[Any], requests: list[Request], *,
                     batch_size: int) -> dict[str, InferenceResult]:
        handle = model.handle
        input_name = handle.inputs[0].name if getattr(handle, "inputs", None) else "input"
        ref = ModelRef(model.name, model.version)
        results: dict[str, InferenceResult] = {}
        tensors: list[np.ndarray] = []
        for request in list(requests):
            assert request.decoded is not None
            try:
                tensors.append(_as_model_dtype(request.decoded.tensor, handle))
            except InputError as exc:
                results[request.request_id] = self._error_result(request, ErrorInfo.from_exception(exc), ref)
                requests.remove(request)
        if not requests:
            return results
        stacked = np.concatenate(tensors, axis=0)
        try:
            outputs = await asyncio.to_thread(self.tee.infer, handle, {input_name: stacked})
        except EdbError as exc:
            error = ErrorInfo.from_exception(exc)
            if exc.code in ("TEE_HANDLE_STALE", "TEE_UNKNOWN_HANDLE"):
                self.request_selection()
            return results | {r.request_id: self._error_result(r, error, ref) for r in requests}
        except Exception as exc:  # a transport bug or a broken reply: these inputs fail, the runner goes on
            log.warning("inference failed unexpectedly (%s)", type(exc).__name__)
            error = ErrorInfo("RUNNER_INFER_FAILED", f"inference failed ({type(exc).__name__})")
            return results | {r.request_id: self._error_result(r, error, ref) for r in requests}
        try:
            answers = split_answers(outputs, [t.shape[0] for t in tensors])
        except RowMismatch:  # (never for a single input: its outputs are not split)
            # the outputs do not have one row per input row (a model that aggregates its batch):
            # answer each input from its own call
            for request in requests:
                results.update(await self._infer(model, [request], batch_size=batch_size))
            return results
        except OutputError as exc:
            error = ErrorInfo.from_exception(exc)
            return results | {r.request_id: self._error_result(r, error, ref) for r in requests}
        done = self.clock()
        for request, answer in zip(requests, answers, strict=True):
            if isinstance(answer, ErrorInfo):
                results[request.request_id] = self._error_result(request, answer, ref)
                continue
            results[request.request_id] = self._answer_result(request, answer, ref, done, batch_size)
        return results

    def _answer_result(self, request: Request, answer: Answer, ref: ModelRef, done: float,
                       batch_size: int) -> InferenceResult:
        latency_ms = (done - request.received) * 1000
        self.stats.record(latency_ms)
        return InferenceResult(request.request_id, ref, answer.predictions, answer.scores,
                               expected=request.decoded.label if request.decoded is not None else None,
                               latency_ms=latency_ms, batch_size=batch_size, outputs=answer.outputs)

    def _error_result(self, request: Request, error: ErrorInfo, ref: ModelRef | None) -> InferenceResult:
        latency_ms = (self.clock() - request.received) * 1000
        self.stats.record(latency_ms, ok=False)
        return InferenceResult(request.request_id, ref, None, error=error, latency_ms=latency_ms)

    def _encode_result(self, result: InferenceResult) -> tuple[bytes, bool]:
        """The result's body and whether it is a successful answer; an answer that cannot be sent as
        it is becomes an error answer."""
        try:
            body = encode_json(result.to_json())
            if len(body) <= RESULT_BODY_LIMIT:
                return body, result.error is None
            raise MessageError("too large")
        except MessageError:
            error = ErrorInfo("RUNNER_RESULT_TOO_LARGE", "the model's answer to this input exceeds the 256 KB "
                                                         "message limit")
        except (ValueError, TypeError) as exc:
            error = ErrorInfo("RUNNER_OUTPUT_INVALID", f"the model's answer has no JSON form ({type(exc).__name__})")
        self.stats.errors += 1  # counted once as an answer already; now it is an error answer
        return encode_json(InferenceResult(result.request_id, result.model, None, error=error,
                                           latency_ms=result.latency_ms, batch_size=result.batch_size).to_json()), False

    async def _send_result(self, result: InferenceResult) -> None:
        from azure.iot.device import Message

        body, ok = self._encode_result(result)
        message = Message(body, message_id=str(uuid.uuid4()),  # type: ignore[no-untyped-call]
                          content_encoding=CONTENT_ENCODING_UTF8, content_type=CONTENT_TYPE_JSON)
        message.correlation_id = result.request_id
        message.custom_properties = application_properties(
            MessageType.RESULT, modelVersion=result.model.version if result.model else "",
            ok="true" if ok else "false")
        while True:
            try:
                await self.client.send_message_to_output(message, endpoints.OUTPUT_RESULTS)
                return
            except ValueError as exc:  # the SDK refused the message itself (its size): retrying cannot help
                if not ok:
                    log.error("the SDK refused an error answer (%s); input %s unanswered", exc, result.request_id)
                    return
                log.warning("the SDK refused the answer to %s (%s); answering with an error", result.request_id, exc)
                self.stats.errors += 1
                await self._send_result(InferenceResult(
                    result.request_id, result.model, None, latency_ms=result.latency_ms, batch_size=result.batch_size,
                    error=ErrorInfo("RUNNER_RESULT_TOO_LARGE", "the SDK refused the answer's size")))
                return
            except Exception as exc:  # never drop an answer: wait for edgeHub
                log.warning("sending a result failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _emit(self, event: ModuleEvent) -> None:
        from azure.iot.device import Message

        message = Message(encode_json(event.to_json()), message_id=str(uuid.uuid4()),  # type: ignore[no-untyped-call]
                          content_encoding=CONTENT_ENCODING_UTF8, content_type=CONTENT_TYPE_JSON)
        message.custom_properties = application_properties(MessageType.EVENT, event=event.event.value)
        try:
            await self.client.send_message_to_output(message, endpoints.OUTPUT_EVENTS)
        except Exception as exc:
            log.warning("sending an event failed (%s)", type(exc).__name__)

    # -- model selection and hot swap ------------------------------------------------------------------
    async def selection_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._select_wanted.wait(), timeout=self.check_interval_s)
            self._select_wanted.clear()
            try:
                await self.select()
            except Exception:
                log.exception("model selection failed")

    async def available_version(self, name: str) -> str | None:
        installed = await asyncio.to_thread(self.tee.list_installed)
        for package in installed:
            if package.name == name:
                return str(package.version)
        return None

    async def select(self) -> None:
        async with self._select_lock:
            spec = self.spec
            active = self.slot.active
            if spec is None:
                if active is not None:
                    await self._unload(self.slot.swap(None))
                    self._set_report(ModelReport(None, None, ModelState.WAITING, iso_utc()))
                return
            try:
                available = await self.available_version(spec.name)
            except EdbError as exc:
                log.warning("cannot list installed packages: %s", exc.code)
                return
            if available is None and active is not None and active.name == spec.name:
                # The package was uninstalled on purpose: stop serving it.
                await self._unload(self.slot.swap(None))
            current = (active.name, active.version) if active is not None and self.slot.active is not None else None
            decision = decide(spec, current, available)
            if not decision.load:
                if self.slot.active is None:
                    self._set_report(ModelReport(spec.name, None, ModelState.WAITING, iso_utc(),
                                                 ErrorInfo("RUNNER_WAITING", decision.reason)))
                return
            self._set_report(ModelReport(spec.name, available, ModelState.LOADING, iso_utc()))
            started = self.clock()
            try:
                handle = await asyncio.to_thread(self.tee.load_model, spec.name)
            except EdbError as exc:
                error = ErrorInfo.from_exception(exc)
                serving = self.slot.active
                self._set_report(ModelReport(spec.name, serving.version if serving else None, ModelState.FAILED,
                                             iso_utc(), error))
                await self._emit(ModuleEvent(EventKind.MODEL_FAILED, SOURCE, spec.name, available, error=error))
                log.warning("loading %s %s failed: %s", spec.name, available, error.code)
                return
            loaded = Loaded(handle, spec.name, str(handle.version))
            previous = self.slot.active
            await self._unload(self.slot.swap(loaded))
            duration_ms = (self.clock() - started) * 1000
            self._set_report(ModelReport(spec.name, loaded.version, ModelState.SERVING, iso_utc()))
            await self._emit(ModuleEvent(EventKind.MODEL_LOADED, SOURCE, spec.name, loaded.version,
                                         state=ModelState.SERVING.value, duration_ms=round(duration_ms, 1)))
            log.info("serving %s %s (was %s) after a %.0f ms load", spec.name, loaded.version,
                     previous.version if previous else None, duration_ms)

    async def _unload(self, handles: list[Any]) -> None:
        for handle in handles:
            try:
                await asyncio.to_thread(self.tee.unload, handle)
            except EdbError as exc:
                log.warning("unload failed: %s", exc.code)

    # -- reporting -----------------------------------------------------------------------------------
    def _set_report(self, report: ModelReport) -> None:
        self.report = report
        self._report_dirty = True
        self._report_now.set()  # a model change is reported at once, not at the next interval

    def reported_patch(self) -> dict[str, Any]:
        return {
            "model": self.report.to_twin(),
            "batching": self.batching.to_twin(),
            "desiredError": self.desired_error.to_json() if self.desired_error else None,
            "stats": {**self.stats.summary(), "duplicates": self.duplicates, "failedBatches": self.failed_batches},
        }

    async def report_loop(self) -> None:
        last_count = -1
        while True:
            self._report_now.clear()  # before sending, so a change made meanwhile wakes us again
            if self._report_dirty or self.stats.count != last_count:
                self._report_dirty = False
                try:
                    await self.client.patch_twin_reported_properties(self.reported_patch())
                    last_count = self.stats.count
                except Exception as exc:
                    self._report_dirty = True
                    log.warning("reported patch failed (%s)", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_now.wait(),
                                       timeout=self.report_interval_s if not self._report_dirty else 0.5)

    async def handle_method(self, name: str, payload: Any) -> tuple[int, dict[str, Any]]:
        if name == "status":
            return 200, self.reported_patch()
        if name == "reload":
            self.request_selection()
            return 200, {"requested": True}
        return 404, {"error": {"code": "RUNNER_UNKNOWN_METHOD", "message": f"no method {str(name)[:40]!r}"}}

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop``; raises :class:`RunnerFailed` if one of the loops ends by itself
        (after reporting it), so the process exits non-zero instead of looking healthy."""
        while not stop.is_set():
            try:
                await self.load_twin()
                break
            except Exception as exc:
                log.warning("get_twin failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(2.0)
        batches = asyncio.create_task(self.batch_loop(), name="batch_loop")
        loops = [batches, asyncio.create_task(self.selection_loop(), name="selection_loop"),
                 asyncio.create_task(self.report_loop(), name="report_loop")]
        stopped = asyncio.create_task(stop.wait(), name="stop")
        failure: RunnerFailed | None = None
        try:
            done, _ = await asyncio.wait([stopped, *loops], return_when=asyncio.FIRST_COMPLETED)
            ended = next((task for task in loops if task in done), None)
            if ended is not None:
                failure = await self._loop_ended(ended)
        finally:
            stopped.cancel()
            # Inputs already received were acknowledged to edgeHub: answer them before leaving.
            self._stopping = True
            self._arrived.set()
            if not batches.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(batches), timeout=5.0)
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._answer_leftovers(failure)
            await self._unload(self.slot.swap(None))
        if failure is not None:
            raise failure

    async def _loop_ended(self, task: asyncio.Task[None]) -> RunnerFailed:
        """A loop that should run forever ended: log it, report it at once, and fail."""
        exc = None if task.cancelled() else task.exception()
        reason = type(exc).__name__ if exc is not None else "returned"
        log.critical("the runner's %s stopped (%s); exiting so the edge agent restarts the module",
                     task.get_name(), reason, exc_info=exc)
        error = ErrorInfo(LOOP_FAILED, f"{task.get_name()} stopped ({reason}); the module exits")
        serving = self.slot.active
        self.report = ModelReport(serving.name if serving else None, serving.version if serving else None,
                                  ModelState.FAILED, iso_utc(), error)
        try:
            await asyncio.wait_for(self.client.patch_twin_reported_properties(self.reported_patch()), timeout=5.0)
        except Exception as patch_exc:
            log.warning("reporting the failure failed (%s)", type(patch_exc).__name__)
        return RunnerFailed(error.message)

    async def _answer_leftovers(self, failure: RunnerFailed | None) -> None:
        """Inputs still queued when the batch loop is gone get an error answer, not silence."""
        if not len(self.batcher):
            return
        error = ErrorInfo(LOOP_FAILED if failure is not None else "RUNNER_STOPPING",
                          "the runner stopped before serving this input")
        pending = self.batcher.take_all()
        log.warning("answering %d input(s) left in the queue with %s", len(pending), error.code)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._answer_all(pending, error), timeout=5.0)

    async def _answer_all(self, pending: list[Pending[Request]], error: ErrorInfo) -> None:
        for item in pending:
            await self._send_result(self._error_result(item.item, error, None))


def _by_width(requests: list[Request]) -> list[list[Request]]:
    """Requests grouped by the shape of a row (arrival order kept within and between groups)."""
    groups: dict[tuple[int, ...], list[Request]] = {}
    for request in requests:
        assert request.decoded is not None
        groups.setdefault(tuple(request.decoded.tensor.shape[1:]), []).append(request)
    return list(groups.values())


_FLOAT_INPUTS = frozenset({"float16", "float32", "float64"})
_INT_INPUTS = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})


def _as_model_dtype(tensor: np.ndarray, handle: Any) -> np.ndarray:
    """The decoded float32 rows in the dtype of the model's first input (a model exported with
    doubles or integers takes them as they are); integers only from whole numbers."""
    try:
        dtype = str(handle.inputs[0].dtype)
    except (AttributeError, IndexError, TypeError):
        return tensor
    if dtype in _FLOAT_INPUTS and dtype != "float32":
        return tensor.astype(dtype)
    if dtype in _INT_INPUTS:
        if not np.all(np.mod(tensor, 1) == 0):
            raise InputError(f"the model takes {dtype} inputs; these are not whole numbers")
        info = np.iinfo(dtype)
        if tensor.size and (tensor.min() < info.min or tensor.max() > info.max):
            raise InputError(f"the model takes {dtype} inputs; these are out of its range")
        return tensor.astype(dtype)
    return tensor
