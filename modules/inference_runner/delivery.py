"""Result messages: the encoding of one answer and its sending (the runner's output edge).

A JSON answer that would pass the message limit has its largest listed outputs summarised
(:func:`.outputs.summarise`) until it fits; only if even that does not fit is it an error answer
(``RUNNER_RESULT_TOO_LARGE``). An input that asked for an ``.npz`` answer (application property
``accept: application/x-npz``) gets its outputs as an ``.npz`` body when they fit. A sampled
fraction of results (twin ``results.upstreamFraction``) is also sent, as JSON, on the
``resultsUpstream`` output that the deployment routes to ``$upstream``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import replace
from typing import Any

from edb.schemas import (
    CONTENT_ENCODING_UTF8,
    CONTENT_TYPE_JSON,
    ErrorInfo,
    InferenceResult,
    MessageError,
    MessageType,
    application_properties,
    encode_json,
)
from edb.schemas.messages import MAX_MESSAGE_BYTES
from inference_runner import endpoints
from inference_runner.decode import CONTENT_TYPE_NPZ, encode_npz
from inference_runner.outputs import Answer, summarise

log = logging.getLogger("inference_runner")
#: Room left for the message's properties: the SDK counts them in its 256 KB check as well.
RESULT_BODY_LIMIT = MAX_MESSAGE_BYTES - 4096
TOO_LARGE = "RUNNER_RESULT_TOO_LARGE"


def result_of(base: InferenceResult, answer: Answer | None) -> InferenceResult:
    """``base`` with the answer's conveniences, listed outputs, summaries and tensor specs."""
    if answer is None:
        return base
    return replace(base, predictions=answer.predictions, scores=answer.scores, outputs=answer.outputs,
                   summaries=answer.summaries, tensors=answer.tensors or None)


def encode_result(result: InferenceResult, answer: Answer | None) -> tuple[bytes, bool, bool]:
    """The JSON body, whether it is a successful answer, and whether outputs were summarised to fit."""
    try:
        try:
            body = encode_json(result.to_json())
            if len(body) <= RESULT_BODY_LIMIT:
                return body, result.error is None, False
        except MessageError:  # above the message limit: summarise below
            pass
        if answer is not None and result.outputs:
            shrunk = _summarised_to_fit(result, answer)
            if shrunk is not None:
                return shrunk, True, True
        raise MessageError("too large")
    except MessageError:
        error = ErrorInfo(TOO_LARGE, "the model's answer to this input exceeds the 256 KB message limit even "
                                     "with its outputs summarised")
    except (ValueError, TypeError) as exc:
        error = ErrorInfo("RUNNER_OUTPUT_INVALID", f"the model's answer has no JSON form ({type(exc).__name__})")
    return encode_json(InferenceResult(result.request_id, result.model, None, error=error,
                                       latency_ms=result.latency_ms, batch_size=result.batch_size).to_json()), \
        False, False


def _summarised_to_fit(result: InferenceResult, answer: Answer) -> bytes | None:
    outputs = dict(result.outputs or {})
    summaries = dict(result.summaries or {})
    for name in sorted(outputs, key=lambda n: -answer.arrays[n].size if n in answer.arrays else 0):
        if name not in answer.arrays:
            continue
        del outputs[name]
        summaries[name] = summarise(name, answer.arrays[name])
        try:
            body = encode_json(replace(result, outputs=outputs or None, summaries=summaries).to_json())
        except MessageError:  # still above the message limit: summarise the next one
            continue
        if len(body) <= RESULT_BODY_LIMIT:
            return bytes(body)
    return None


class ResultSender:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.errors_after_answer = 0  # answers that became error answers while being sent

    async def send(self, result: InferenceResult, answer: Answer | None, *, npz: bool = False,
                   upstream: bool = False,
                   upstream_result: tuple[InferenceResult, Answer | None] | None = None) -> None:
        """``result`` on ``results``; with ``upstream``, also on ``resultsUpstream`` (as
        ``upstream_result`` when given: an OIP answer's values, which its result message leaves out)."""
        from azure.iot.device import Message

        body, ok, _ = encode_result(result, answer)
        if not ok and result.error is None:
            self.errors_after_answer += 1
        content_type = CONTENT_TYPE_JSON
        if npz and ok and answer is not None and answer.arrays:
            packed = encode_npz(answer.arrays)
            if len(packed) <= RESULT_BODY_LIMIT:
                body, content_type = packed, CONTENT_TYPE_NPZ
        await self._send(result, body, content_type, ok, endpoints.OUTPUT_RESULTS, Message)
        if upstream:
            if upstream_result is not None:
                json_body, ok, _ = encode_result(*upstream_result)
            else:
                json_body = body if content_type == CONTENT_TYPE_JSON else encode_result(result, answer)[0]
            await self._send(result, json_body, CONTENT_TYPE_JSON, ok, endpoints.OUTPUT_RESULTS_UPSTREAM, Message)

    async def _send(self, result: InferenceResult, body: bytes, content_type: str, ok: bool, output: str,
                    message_class: Any) -> None:
        message = message_class(body, message_id=str(uuid.uuid4()), content_encoding=CONTENT_ENCODING_UTF8
                                if content_type == CONTENT_TYPE_JSON else None, content_type=content_type)
        message.correlation_id = result.request_id
        message.custom_properties = application_properties(
            MessageType.RESULT, modelVersion=result.model.version if result.model else "",
            ok="true" if ok else "false", requestId=result.request_id)
        while True:
            try:
                await self.client.send_message_to_output(message, output)
                return
            except ValueError as exc:  # the SDK refused the message itself (its size): retrying cannot help
                if not ok:
                    log.error("the SDK refused an error answer (%s); input %s unanswered", exc, result.request_id)
                    return
                log.warning("the SDK refused the answer to %s (%s); answering with an error", result.request_id, exc)
                self.errors_after_answer += 1
                error = InferenceResult(result.request_id, result.model, None, latency_ms=result.latency_ms,
                                        batch_size=result.batch_size,
                                        error=ErrorInfo(TOO_LARGE, "the SDK refused the answer's size"))
                await self._send(error, encode_json(error.to_json()), CONTENT_TYPE_JSON, False, output,
                                 message_class)
                return
            except Exception as exc:  # never drop an answer: wait for edgeHub
                log.warning("sending a result failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1.0)
