"""The runner's imperative shell: inputs in, batches through the TEE, results out, hot swaps.

Decisions live in the pure helpers (:mod:`.batching`, :mod:`.model_slot`, :mod:`.selection`);
this file wires them to the module client and the TEE client (the inference half of a batch is
:mod:`.serving`). Every input message gets exactly
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
    LoadFailure,
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
from inference_runner import endpoints, plan
from inference_runner.batching import Batcher, Pending, RecentIds
from inference_runner.decode import CONTENT_TYPE_NPZ, DecodedInput, decode_body
from inference_runner.delivery import RESULT_BODY_LIMIT, ResultSender, result_of
from inference_runner.model_info import model_info
from inference_runner.model_slot import Loaded, ModelSlot
from inference_runner.outputs import Answer, present
from inference_runner.selection import decide
from inference_runner.serving import InferenceMixin, Reply, Request
from inference_runner.settings import ResultSettings, StatsSettings, parse_limits, parse_results, parse_stats
from inference_runner.signature import InputError, Limits, Signature, bind
from inference_runner.stats import LatencyStats
from inference_runner.status import DEFAULT_REPORT_INTERVAL_S, Facts, failure_after_load, model_report, report_wait

log = logging.getLogger("inference_runner")
SOURCE = "inference_runner"
#: A batch failed in a way no narrower handler foresaw (a bug): its inputs are answered with this.
BATCH_FAILED = "RUNNER_INTERNAL"
#: A loop the runner needs stopped for good: reported, then the process exits non-zero.
LOOP_FAILED = "RUNNER_LOOP_FAILED"
__all__ = ["RESULT_BODY_LIMIT", "Reply", "Request", "RunnerFailed", "RunnerService"]


class RunnerFailed(EdbError):
    """The runner cannot continue (one of its loops ended); ``main`` exits non-zero so the edge
    agent's restartPolicy applies."""

    code = LOOP_FAILED


class RunnerService(InferenceMixin):
    def __init__(self, client: Any, tee: Any, *, check_interval_s: float = 30.0,
                 report_interval_s: float = DEFAULT_REPORT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``report_interval_s``: the counters' reporting interval when the twin sets none
        (``stats.reportIntervalSeconds`` overrides it)."""
        self.client = client
        self.tee = tee
        self.clock = clock
        self.check_interval_s = check_interval_s
        self.default_stats = StatsSettings(report_interval_s)
        self.stats_settings = self.default_stats
        self.desired_doc: dict[str, Any] = {}
        self.spec: ModelSpec | None = None
        self.desired_error: ErrorInfo | None = None
        self.batching = BatchingSettings()
        self.limits = Limits()
        self.result_settings = ResultSettings()
        self.sender = ResultSender(client)
        # by (model name, version, input shapes): learned output bytes per row; rows per call after a
        # TEE refusal
        self._row_bytes: dict[tuple[str, str, plan.Key], float] = {}
        self._max_rows: dict[tuple[str, str, plan.Key], int] = {}
        self._signatures: dict[int, tuple[Any, Signature]] = {}  # by id() of a loaded handle (kept alive)
        self.metadata: dict[str, Any] | None = None  # the serving model's metadata, bounded (model_info)
        self.model_metadata: Any = None  # edb.tee.types.ModelMetadata of the serving model
        self.oip_status: dict[str, Any] = {"listening": False}  # set by main when EDB_OIP_LISTEN is set
        self.split_batches = 0
        self.batcher: Batcher[Request] = Batcher(self.batching.max_batch, self.batching.max_latency_ms / 1000)
        self.slot: ModelSlot[Any] = ModelSlot()
        self.recent = RecentIds()
        self.stats = LatencyStats()
        self.duplicates = 0
        self.failed_batches = 0
        self.report = ModelReport(None, None, ModelState.WAITING, iso_utc())
        self.load_failure: LoadFailure | None = None  # the last failed load (reported model.lastLoadFailure)
        self._loading: str | None = None  # the version being loaded now
        self._waiting: str | None = None  # why the last selection loads nothing
        self._arrived = asyncio.Event()
        self._select_lock = asyncio.Lock()
        self._select_wanted = asyncio.Event()
        self._report_dirty = False  # the counters changed without a count (sent at the interval)
        self._report_urgent = True  # the status or a setting changed: report at once
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
        limits = parse_limits(self.desired_doc.get("limits"))
        results = parse_results(self.desired_doc.get("results"))
        stats = parse_stats(self.desired_doc.get("stats"), self.default_stats)
        errors = [e for e in (spec, batching, limits, results, stats) if isinstance(e, ErrorInfo)]
        self.desired_error = errors[0] if errors else None
        if not isinstance(spec, ErrorInfo):
            self.spec = spec
        if isinstance(limits, Limits):
            self.limits = limits
        if isinstance(results, ResultSettings):
            self.result_settings = results
        if isinstance(stats, StatsSettings):
            self.stats_settings = stats
        if isinstance(batching, BatchingSettings):
            self.batching = batching
            self.batcher.configure(batching.max_batch, batching.max_latency_ms / 1000)
        self._refresh_report()  # (the wanted model may have changed)
        self._report_changed()  # the settings are reported back at once
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
        properties = getattr(message, "custom_properties", None) or {}
        npz = str(properties.get("accept", "")).lower() == CONTENT_TYPE_NPZ
        try:
            decoded = decode_body(message.data, getattr(message, "content_type", None), properties,
                                  max_bytes=self.limits.max_input_bytes)
            request = Request(request_id, decoded, None, received, npz=npz)
        except InputError as exc:
            request = Request(request_id, None, ErrorInfo.from_exception(exc), received, npz=npz)
        except Exception as exc:  # the message was acknowledged to edgeHub: it must still get an answer
            log.warning("decoding input %s failed unexpectedly (%s)", request_id, type(exc).__name__)
            request = Request(request_id, None, ErrorInfo("RUNNER_BAD_INPUT", f"undecodable input "
                                                          f"({type(exc).__name__})"), received)
        self.batcher.add(request, request.rows, received)
        self._arrived.set()

    def submit(self, request_id: str, decoded: DecodedInput) -> asyncio.Future[Reply]:
        """Queue an Open Inference Protocol request with the messages (same batching, limits, stats
        and results options); the future gets its answer."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if self._stopping:
            future.set_result(Reply(None, None, ErrorInfo("RUNNER_STOPPING", "the runner is stopping")))
            return future
        request = Request(request_id, decoded, None, self.clock(), reply=future)
        self.batcher.add(request, request.rows, request.received)
        self._arrived.set()
        return future

    def _on_package_notification(self, message: Any) -> None:
        try:
            event = ModuleEvent.from_json(decode_json(message.data))
        except MessageError:
            return
        if self.spec is not None and event.package == self.spec.name:
            self.request_selection()

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
                    await self._deliver(pending.item, self._error_result(pending.item, error, None), None)

    async def serve(self, batch: list[Pending[Request]], answered: set[str] | None = None) -> None:
        requests = [p.item for p in batch]
        answers: dict[str, tuple[InferenceResult, Answer | None]] = {}
        for request in requests:
            if request.error is not None:
                answers[request.request_id] = (self._error_result(request, request.error, None), None)
        valid = [r for r in requests if r.decoded is not None]
        if valid:
            lease = self.slot.acquire()
            if lease is None:
                error = ErrorInfo("RUNNER_NO_MODEL", "no model version is serving yet")
                for request in valid:
                    answers[request.request_id] = (self._error_result(request, error, None), None)
            else:
                try:
                    signature = self.signature(lease)
                    ref = ModelRef(lease.name, lease.version)
                    bound: list[tuple[Request, dict[str, np.ndarray]]] = []
                    for request in valid:
                        assert request.decoded is not None
                        try:
                            bound.append((request, bind(request.decoded.tensors, signature, self.limits)))
                        except InputError as exc:
                            answers[request.request_id] = (self._error_result(
                                request, ErrorInfo.from_exception(exc), ref), None)
                    # requests that cannot be stacked (other shapes, a model without a dynamic batch
                    # dimension) are separate TEE calls, in arrival order
                    for group in plan.groups(bound, signature.batchable):
                        answers.update(await self._infer(lease, signature, group, batch_size=len(valid)))
                finally:
                    retired = self.slot.release(lease)
                    await self._unload(retired)
        self.stats.batches += 1
        for request in requests:  # in arrival order
            result, answer = answers[request.request_id]
            await self._deliver(request, result, answer)
            if answered is not None:
                answered.add(request.request_id)

    async def _deliver(self, request: Request, result: InferenceResult, answer: Answer | None) -> None:
        """The answer to its caller: an OIP request's future, and a result message for every request
        (the reporter's metrics; a sampled copy upstream)."""
        upstream = self.result_settings.upstream(request.request_id)
        full: tuple[InferenceResult, Answer | None] | None = None
        if request.reply is not None:
            if not request.reply.done():
                request.reply.set_result(Reply(result.model, answer if result.error is None else None,
                                               result.error))
            if upstream and answer is not None and result.error is None:  # upstream gets the values too
                shown = present(answer.arrays)
                full = (result_of(result, shown), shown) if isinstance(shown, Answer) else None
            answer = None  # the caller has the tensors; the result message carries shapes and dtypes
        before = self.sender.errors_after_answer
        await self.sender.send(result, answer, npz=request.npz, upstream=upstream, upstream_result=full)
        self.stats.errors += self.sender.errors_after_answer - before

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
            try:
                await self._select()
            finally:
                self._loading = None
                self._refresh_report()  # from what is true now, whatever happened above

    async def _select(self) -> None:
        spec = self.spec
        active = self.slot.active
        if spec is None:
            self._waiting = None
            if active is not None:
                await self._unload(self.slot.swap(None))
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
            self._waiting = decision.reason if self.slot.active is None else None
            return
        assert available is not None
        self._waiting = None
        self._loading = available
        self._refresh_report()
        started = self.clock()
        try:
            handle = await asyncio.to_thread(self.tee.load_model, spec.name)
        except Exception as exc:
            error = ErrorInfo.from_exception(exc) if isinstance(exc, EdbError) else \
                ErrorInfo("RUNNER_LOAD_FAILED", f"loading failed unexpectedly ({type(exc).__name__})")
            self.load_failure = LoadFailure(spec.name, available, error, iso_utc())
            self._loading = None
            self._refresh_report()
            await self._emit(ModuleEvent(EventKind.MODEL_FAILED, SOURCE, spec.name, available, error=error))
            serving = self.slot.active
            log.warning("loading %s %s failed: %s (serving %s)", spec.name, available, error.code,
                        f"{serving.name} {serving.version}" if serving else "nothing",
                        exc_info=not isinstance(exc, EdbError))
            return
        loaded = Loaded(handle, spec.name, str(handle.version))
        metadata = await self._metadata(handle)
        previous = self.slot.active
        await self._unload(self.slot.swap(loaded))
        self.model_metadata = metadata
        self.metadata = model_info(handle, metadata)
        duration_ms = (self.clock() - started) * 1000
        self.load_failure = failure_after_load(self.load_failure, spec.name, loaded.version)
        self._loading = None
        self._refresh_report()
        await self._emit(ModuleEvent(EventKind.MODEL_LOADED, SOURCE, spec.name, loaded.version,
                                     state=ModelState.SERVING.value, duration_ms=round(duration_ms, 1)))
        log.info("serving %s %s (was %s) after a %.0f ms load", spec.name, loaded.version,
                 previous.version if previous else None, duration_ms)

    async def _metadata(self, handle: Any) -> Any:
        """The model's metadata from the TEE (None if this TEE has no such command or refuses)."""
        get = getattr(self.tee, "model_metadata", None)
        if get is None:
            return None
        try:
            return await asyncio.to_thread(get, handle)
        except EdbError as exc:
            log.warning("model metadata unavailable: %s", exc.code)
            return None

    async def _unload(self, handles: list[Any]) -> None:
        for handle in handles:
            try:
                await asyncio.to_thread(self.tee.unload, handle)
            except EdbError as exc:
                log.warning("unload failed: %s", exc.code)

    # -- reporting -----------------------------------------------------------------------------------
    def mark_report_dirty(self) -> None:
        """A counter changed (not urgent: sent with the next periodic report)."""
        self._report_dirty = True

    def _report_changed(self) -> None:
        self._report_urgent = True
        self._report_now.set()  # a change of status or settings is reported at once, not at the next interval

    def _refresh_report(self) -> None:
        """Recompute the reported model status from the facts (reported at once if it changed)."""
        serving = self.slot.active
        facts = Facts(self.spec.name if self.spec is not None else None,
                      (serving.name, serving.version) if serving is not None else None,
                      self._loading, self._waiting, self.load_failure)
        report = model_report(facts, self.report, iso_utc())
        if report != self.report:
            self.report = report
            self._report_changed()

    def _counters(self) -> tuple[int, ...]:
        return (self.stats.count, self.stats.errors, self.stats.batches, self.duplicates, self.failed_batches,
                self.split_batches)

    def reported_patch(self) -> dict[str, Any]:
        return {
            "model": self.report.to_twin(),
            "batching": self.batching.to_twin(),
            "desiredError": self.desired_error.to_json() if self.desired_error else None,
            "limits": self.limits.to_twin(),
            "results": self.result_settings.to_twin(),
            "modelInfo": self.metadata,
            "oip": self.oip_status,
            "stats": {**self.stats.summary(), "duplicates": self.duplicates, "failedBatches": self.failed_batches,
                      "splitBatches": self.split_batches, **self.stats_settings.to_twin()},
        }

    async def report_loop(self) -> None:
        """Reported properties: a change of the model's status or of a setting at once; the counters
        at most every ``stats.reportIntervalSeconds`` and only when they changed (:func:`.status.report_wait`)."""
        last_sent: float | None = None
        sent: tuple[int, ...] | None = None
        failures = 0
        while True:
            self._report_now.clear()  # before deciding, so a change made meanwhile wakes us again
            counters = self._counters()
            interval = self.stats_settings.report_interval_s
            wait = report_wait(now=self.clock(), last_sent=last_sent, urgent=self._report_urgent,
                               counters_changed=self._report_dirty or counters != sent, interval_s=interval)
            if wait == 0.0:
                self._report_urgent = self._report_dirty = False
                try:
                    await self.client.patch_twin_reported_properties(self.reported_patch())
                    last_sent, sent, failures = self.clock(), counters, 0
                    continue
                except Exception as exc:
                    self._report_urgent = True
                    failures += 1
                    wait = min(30.0, 0.5 * 2 ** min(failures - 1, 6))
                    log.warning("reported patch failed (%s); again in %.1f s", type(exc).__name__, wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_now.wait(), timeout=interval if wait is None else wait)

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
                                  ModelState.FAILED, iso_utc(), error, self.load_failure)
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
            await self._deliver(item.item, self._error_result(item.item, error, None), None)
