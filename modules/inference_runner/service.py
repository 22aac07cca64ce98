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
    decode_json,
    encode_json,
    iso_utc,
    merge_twin_patch,
    parse_batching,
    parse_model_spec,
)
from inference_runner import endpoints
from inference_runner.batching import Batcher, Pending, RecentIds
from inference_runner.decoding import DecodedInput, InputError, decode_input
from inference_runner.model_slot import Loaded, ModelSlot
from inference_runner.selection import decide
from inference_runner.stats import LatencyStats

log = logging.getLogger("inference_runner")
SOURCE = "inference_runner"


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
        self.report = ModelReport(None, None, ModelState.WAITING, iso_utc())
        self._arrived = asyncio.Event()
        self._select_lock = asyncio.Lock()
        self._select_wanted = asyncio.Event()
        self._report_dirty = True
        self._report_now = asyncio.Event()
        self._stopping = False

    # -- desired -----------------------------------------------------------------------------------
    async def load_twin(self) -> None:
        twin = await self.client.get_twin()
        desired = dict(twin.get("desired") or {})
        desired.pop("$version", None)
        self.desired_doc = desired
        self._apply_desired()

    async def on_desired_patch(self, patch: Mapping[str, Any]) -> None:
        self.desired_doc = merge_twin_patch(self.desired_doc, {k: v for k, v in patch.items() if k != "$version"})
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
        request_id = str(message.message_id or f"unidentified-{uuid.uuid4()}")[:128]
        if self.recent.seen(request_id):
            self.duplicates += 1  # edgeHub redelivered it: it was answered already
            return
        received = self.clock()
        features = self._features()
        try:
            decoded = decode_input(message.data, getattr(message, "content_type", None), features)
            label = (getattr(message, "custom_properties", None) or {}).get("label")
            if decoded.label is None and isinstance(label, str) and label.isdigit() and len(label) < 6:
                decoded = DecodedInput(decoded.tensor, int(label))  # binary inputs carry it as a property
            request = Request(request_id, decoded, None, received)
        except InputError as exc:
            request = Request(request_id, None, ErrorInfo.from_exception(exc), received)
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
            await self.serve(self.batcher.take())

    async def serve(self, batch: list[Pending[Request]]) -> None:
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
                    answers.update(await self._infer(lease, valid))
                finally:
                    retired = self.slot.release(lease)
                    await self._unload(retired)
        self.stats.batches += 1
        for request in requests:  # in arrival order
            await self._send_result(answers[request.request_id])

    async def _infer(self, model: Loaded[Any], requests: list[Request]) -> dict[str, InferenceResult]:
        input_name = model.handle.inputs[0].name if getattr(model.handle, "inputs", None) else "input"
        tensors = [r.decoded.tensor for r in requests if r.decoded is not None]
        stacked = np.concatenate(tensors, axis=0)
        ref = ModelRef(model.name, model.version)
        try:
            outputs = await asyncio.to_thread(self.tee.infer, model.handle, {input_name: stacked})
        except EdbError as exc:
            error = ErrorInfo.from_exception(exc)
            if exc.code in ("TEE_HANDLE_STALE", "TEE_UNKNOWN_HANDLE"):
                self.request_selection()
            return {r.request_id: self._error_result(r, error, ref) for r in requests}
        labels = np.asarray(outputs.get("label", next(iter(outputs.values())))).reshape(len(stacked), -1)
        probabilities = outputs.get("probabilities")
        results: dict[str, InferenceResult] = {}
        row = 0
        done = self.clock()
        for request, tensor in zip(requests, tensors, strict=True):
            count = tensor.shape[0]
            predictions = [int(v) for v in labels[row:row + count, 0]]
            scores = None
            if probabilities is not None:
                scores = [round(float(v), 4) for v in np.asarray(probabilities)[row:row + count].max(axis=1)]
            latency_ms = (done - request.received) * 1000
            self.stats.record(latency_ms)
            assert request.decoded is not None
            results[request.request_id] = InferenceResult(
                request.request_id, ref, predictions, scores, expected=request.decoded.label,
                latency_ms=latency_ms, batch_size=len(requests))
            row += count
        return results

    def _error_result(self, request: Request, error: ErrorInfo, ref: ModelRef | None) -> InferenceResult:
        latency_ms = (self.clock() - request.received) * 1000
        self.stats.record(latency_ms, ok=False)
        return InferenceResult(request.request_id, ref, None, error=error, latency_ms=latency_ms)

    async def _send_result(self, result: InferenceResult) -> None:
        from azure.iot.device import Message

        message = Message(encode_json(result.to_json()), message_id=str(uuid.uuid4()),  # type: ignore[no-untyped-call]
                          content_encoding=CONTENT_ENCODING_UTF8, content_type=CONTENT_TYPE_JSON)
        message.correlation_id = result.request_id
        message.custom_properties = application_properties(
            MessageType.RESULT, modelVersion=result.model.version if result.model else "",
            ok="false" if result.error else "true")
        while True:
            try:
                await self.client.send_message_to_output(message, endpoints.OUTPUT_RESULTS)
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
            "stats": {**self.stats.summary(), "duplicates": self.duplicates},
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
        while not stop.is_set():
            try:
                await self.load_twin()
                break
            except Exception as exc:
                log.warning("get_twin failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(2.0)
        batches = asyncio.create_task(self.batch_loop())
        tasks = [asyncio.create_task(self.selection_loop()), asyncio.create_task(self.report_loop())]
        try:
            await stop.wait()
        finally:
            # Inputs already received were acknowledged to edgeHub: answer them before leaving.
            self._stopping = True
            self._arrived.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(batches), timeout=5.0)
            for task in (batches, *tasks):
                task.cancel()
            await asyncio.gather(batches, *tasks, return_exceptions=True)
            await self._unload(self.slot.swap(None))
