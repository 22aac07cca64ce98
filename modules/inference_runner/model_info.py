"""The serving model's description for the runner's reported properties (pure, bounded).

A twin holds at most 32 KB of reported properties in all, so this is the signature, the producer
and opsets, and for each ``metadata_props`` entry its length and first characters. Nothing the
model chose becomes a twin key (IoT Hub refuses keys with ``.``, ``$`` or spaces, and one refused
key would stop every later report): opsets and metadata entries are lists of objects. The whole
metadata is on the model handle (``TeeClient.model_metadata``) and in the Open Inference
Protocol's model metadata (``parameters``).
"""

from __future__ import annotations

from typing import Any

from inference_runner.signature import from_handle

MAX_KEYS = 32
PREVIEW = 48


def model_info(handle: Any, metadata: Any | None) -> dict[str, Any]:
    info: dict[str, Any] = {"name": str(getattr(handle, "name", ""))[:64],
                            "version": str(getattr(handle, "version", ""))[:64]}
    sig = from_handle(handle)
    info["inputs"] = [i.to_json() for i in sig.inputs[:16]]
    info["outputs"] = [o.to_json() for o in sig.outputs[:16]]
    if metadata is not None:
        info["producer"] = f"{metadata.producer_name} {metadata.producer_version}".strip()[:128]
        info["irVersion"] = metadata.ir_version
        info["opsets"] = [{"domain": (k or "ai.onnx")[:64], "version": v}
                          for k, v in list(metadata.opsets.items())[:8]]
        keys = sorted(metadata.custom)[:MAX_KEYS]
        info["customMetadata"] = [{"key": k[:64], "chars": len(metadata.custom[k]),
                                   "preview": metadata.custom[k][:PREVIEW]} for k in keys]
        if len(metadata.custom) > MAX_KEYS or metadata.truncated:
            info["customMetadataOmitted"] = len(metadata.custom) - len(keys) + len(metadata.truncated)
    return info
