"""Build-time preflight: load a payload exactly as the TEE's install will, before it is encrypted.

``edb package build`` and ``edb cloud build`` call :func:`preflight` on the very bytes they are about
to encrypt. It runs the TEE's own code, not a copy: the payload goes into a :class:`SecureBuffer`,
a plain ONNX payload is converted to the aligned layout by the installer's ``_to_layout``, and
:meth:`ModelManager.make` creates the session with the TEE's session options, the prepacking the
install would choose (``choose_prepack`` with the default ``prepackMaxBytes``), the same fallback
from in-place to copied weights, and the same check that some output can cross the boundary. A
payload the TEE would refuse is refused here with ``CPK_MODEL_UNSUPPORTED``, the TEE's code and the
whole cause (bounded as every reported error is). ``--skip-preflight`` skips it.

The build machine is where the publisher's plaintext lives anyway; nothing is written: the session
resolves the layout's stub locations against an empty temporary directory, as in the TEE.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edb.cpk.errors import MODEL_UNSUPPORTED
from edb.errors import EdbError, PackageError
from edb.tee.types import TensorSpec
from edb_tee.config import MeasuredConfig
from edb_tee.hardening import SecureBuffer
from edb_tee.install import MODEL_MEDIA_TYPES, _to_layout
from edb_tee.models import ModelManager, choose_prepack


@dataclass(frozen=True)
class PreflightReport:
    weights: str  # "in-place" or "copied" (see edb_tee.models.create_session)
    prepacked: bool
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        def spec(t: TensorSpec) -> dict[str, Any]:
            return {"name": t.name, "dtype": t.dtype, "shape": [d if isinstance(d, int) else str(d) for d in t.shape]}

        return {"weights": self.weights, "prepacked": self.prepacked, "inputs": [spec(t) for t in self.inputs],
                "outputs": [spec(t) for t in self.outputs], "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        how = "weights in place" if self.weights == "in-place" \
            else "weights copied by ONNX Runtime (its optimisers read them)"
        left = [t.name for t in self.outputs if t.dtype == "unknown"]
        unsent = f"; not returned (sequence/map): {', '.join(left)}" if left else ""
        return (f"preflight: loads as the TEE loads it ({how}, {len(self.inputs)} input(s), "
                f"{len(self.outputs) - len(left)} output(s){unsent}) in {self.seconds * 1000:.0f} ms")


def preflight(payload: IO[bytes], size: int, media_type: str, *,
              prepack_max_bytes: int = MeasuredConfig.prepack_max_bytes,
              max_model_bytes: int = MeasuredConfig.max_model_bytes) -> PreflightReport:
    """Load ``size`` bytes of ``payload`` (read from its current position, which is restored) as the
    TEE's install would; raise ``CPK_MODEL_UNSUPPORTED`` with the cause if the TEE would refuse it."""
    if media_type not in MODEL_MEDIA_TYPES:
        raise PackageError(f"media type {media_type!r} is not a model the TEE loads (it loads "
                           f"{', '.join(MODEL_MEDIA_TYPES)}); build with --skip-preflight to package it anyway",
                           code=MODEL_UNSUPPORTED)
    if size > max_model_bytes:
        raise PackageError(f"the model is {size} bytes; the TEE accepts at most {max_model_bytes} by default "
                           "(TEE_MODEL_TOO_LARGE)", code=MODEL_UNSUPPORTED)
    start = payload.tell()
    began = time.perf_counter()
    buf = SecureBuffer(size)
    try:
        _read_into(payload, buf, size)
    except BaseException:
        buf.close()
        raise
    finally:
        payload.seek(start)
    try:
        with tempfile.TemporaryDirectory(prefix="edb-preflight-") as tmp:
            empty = Path(tmp) / "ort-empty"
            empty.mkdir(mode=0o700)
            manager = ModelManager(empty)
            try:
                buf = _to_layout(buf)
                prepack = choose_prepack(None, buf.size, prepack_max_bytes)
                model = manager.make("preflight", "0", "preflight", buf, prepack=prepack)  # closes buf on failure
            except EdbError as exc:
                buf.close()
                raise PackageError(f"the TEE would refuse this model ({exc.code}): {exc.message}",
                                   code=MODEL_UNSUPPORTED) from exc
            try:
                return PreflightReport(model.weights, model.prepack, model.inputs, model.outputs,
                                       time.perf_counter() - began)
            finally:
                model.close()
    finally:
        buf.close()


def _read_into(payload: IO[bytes], buf: SecureBuffer, size: int) -> None:
    view = buf.view()
    done = 0
    while done < size:
        n = payload.readinto(view[done:])  # type: ignore[attr-defined]
        if not n:
            raise PackageError(f"the payload ended after {done} of {size} bytes", code=MODEL_UNSUPPORTED)
        done += n
    del view
