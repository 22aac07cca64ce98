"""ONNX Runtime inside the TEE, from memory, without a second copy of the weights.

A model is held as the EDB aligned layout (:mod:`edb.onnx_layout`) in one :class:`SecureBuffer`.
The session is created from the (small) graph bytes; every external initializer is registered with
``SessionOptions.add_initializer`` as an ``OrtValue`` viewing the buffer, and prepacking is off, so
ONNX Runtime computes on the TEE's buffer directly (measured: peak RSS about 1.07x the model on top
of the process baseline, versus about 3x for ``InferenceSession(bytes)``). A model whose graph
optimisers must read weights while the session is created (x86 NCHWc Conv reordering, fusions) is
created again with the weights handed over by ``add_external_initializers``, which ONNX Runtime
copies (in memory, never through a file): see :func:`create_session`. With ``prepack=True``
ONNX Runtime additionally keeps prepacked copies of MatMul/Conv weights: faster for batched inputs,
about twice the memory.

Outputs: tensors cross the boundary (numbers as views, strings through the string codec of
:mod:`edb.tee.protocol`); outputs of other ONNX types (sequences and maps, such as the
``seq(map(string, tensor(float)))`` of scikit-learn's ZipMap) cannot, so they are never computed
for the caller, listed with dtype ``unknown``, and each model creation logs which ones were left
out and why. A model none of whose outputs can cross is refused (``TEE_OUTPUT_UNSUPPORTED``).

Nothing touches a file: the layout's stub locations resolve against an empty directory that is
never read (see :mod:`edb.onnx_layout`).

Handles are owned by the client process (its pid, from SO_PEERCRED) that loaded them; they are
released when it unloads them or when its last connection closes. Sessions of the same installed
version and options are shared between handles. Unloading the last handle drops the session and
overwrites the buffer.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edb import onnx_layout
from edb.errors import TeeError
from edb.ort import onnxruntime as ort
from edb.schemas.common import MAX_ERROR_MESSAGE, clip_message
from edb.tee import errors as E
from edb.tee.protocol import dtype_from_code
from edb.tee.types import ModelHandle, TensorSpec
from edb_tee.hardening import SecureBuffer

log = logging.getLogger("edb_tee.models")
Array = npt.NDArray[Any]
#: a model cause leaves room for the TEE's own words within the bound of a reported error message
MODEL_CAUSE_CHARS = MAX_ERROR_MESSAGE - 64

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(uint32)": "uint32", "tensor(int64)": "int64", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool", "tensor(string)": "string",
}


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, (int, str)) or d is None else str(d) for d in (arg.shape or ()))
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, "unknown"), shape)


def model_cause(exc: BaseException, limit: int = MODEL_CAUSE_CHARS) -> str:
    """Why ONNX Runtime refused a model, whole but bounded: the exception type and its message on one
    line; a longer one keeps its head (what failed) and its tail (ONNX Runtime nests the root cause
    last, e.g. ``... env.cc:538 OpenRandomAccessFile Random-access reads require a regular file``).
    The first line cut at 300 characters, as before, lost exactly that tail."""
    return clip_message(f"{type(exc).__name__}: {' '.join(str(exc).split())}", limit)


@dataclass
class LoadedModel:
    name: str
    version: str
    package_id: str
    prepack: bool
    buffer: SecureBuffer
    session: ort.InferenceSession
    ortvalues: list[Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tensor_outputs: list[str]
    input_names: frozenset[str] = frozenset()
    required_inputs: frozenset[str] = frozenset()  # inputs whose type is not optional(...)
    weights: str = "in-place"  # IN_PLACE or COPIED (see create_session)
    refs: int = 0
    active: int = 0  # inferences running; -1 once closed
    closing: bool = False
    # a plain lock on the per-call path; the condition (same lock) only wakes a closing thread
    lock: threading.Lock = field(default_factory=threading.Lock)
    cond: threading.Condition = field(init=False)

    run: Any = field(init=False)  # the session's native run(output_names, feeds, run_options)

    def __post_init__(self) -> None:
        self.cond = threading.Condition(self.lock)
        native = getattr(self.session, "_sess", None)  # onnxruntime's pybind session, if this version has one
        self.run = native.run if native is not None else self.session.run

    def close(self) -> None:
        """Wait for running inferences, drop the session, then overwrite and unmap the buffer."""
        with self.cond:
            self.closing = True
            while self.active > 0:
                self.cond.wait()
            self.active = -1  # closed: no new inference may start
        del self.session
        self.run = None
        self.ortvalues.clear()
        self.buffer.close()


def choose_prepack(requested: bool | None, model_bytes: int | None, limit: int) -> bool:
    """The caller's choice, else prepack small models (speed) and load large ones in place (memory)."""
    if requested is not None:
        return requested
    return model_bytes is not None and model_bytes <= limit


def session_options(*, prepack: bool, intra_op_threads: int = 0) -> ort.SessionOptions:
    """The ONNX Runtime options of every session the TEE creates (bench/inference_overhead.py
    builds its in-process baseline with the same ones, so it measures the boundary only).

    Threads, spinning and the arena stay ONNX Runtime's defaults: one intra-op thread per physical
    core (the caller's thread plus workers pinned to the other cores), workers spinning between
    parallel sections. Measured on 2 cores: one thread makes the small model 1.5x slower; no
    spinning (allow_spinning=0, or force_spinning_stop=1) adds a worker wake-up to every operator
    (+25-40 us per call on the small model). ``prepack=False`` keeps ONNX Runtime from copying
    MatMul/Conv weights into its own packed buffers (in-place loading)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if intra_op_threads:
        so.intra_op_num_threads = intra_op_threads
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    return so


def _weights(buffer: SecureBuffer, parsed: onnx_layout.ParsedLayout) -> tuple[list[str], list[Any]]:
    """An ``OrtValue`` viewing each external weight of the layout in ``buffer`` (no copy)."""
    names: list[str] = []
    values: list[Any] = []
    for t in parsed.tensors:
        dt = dtype_from_code(t.data_type)
        arr = np.frombuffer(buffer.mm, dtype=dt, count=t.length // dt.itemsize, offset=t.offset).reshape(t.dims)
        names.append(t.name)
        values.append(ort.OrtValue.ortvalue_from_numpy(arr))
    return names, values


#: How a session got its weights: viewing the TEE's buffer (``add_initializer``), or copied by ONNX
#: Runtime from that buffer (``add_external_initializers``) when its graph optimisers must read them.
IN_PLACE, COPIED = "in-place", "copied"


def build_session(buffer: SecureBuffer, *, prepack: bool, empty_dir: Path,
                  intra_op_threads: int = 0) -> tuple[ort.InferenceSession, list[Any]]:
    """Create the session on the layout in ``buffer`` (parsed and bounds-checked first)."""
    session, values, _ = create_session(buffer, prepack=prepack, empty_dir=empty_dir,
                                        intra_op_threads=intra_op_threads)
    return session, values


def create_session(buffer: SecureBuffer, *, prepack: bool, empty_dir: Path, intra_op_threads: int = 0,
                   modes: tuple[str, ...] = (IN_PLACE, COPIED)) -> tuple[ort.InferenceSession, list[Any], str]:
    """The session on the layout in ``buffer``, and how it got its weights (:data:`IN_PLACE` or :data:`COPIED`).

    First in place: every weight registered with ``add_initializer`` as a view of the buffer, so ONNX
    Runtime computes on the TEE's memory (peak RSS about 1.04x the model). That fails when a graph
    optimiser must *read* a weight at session creation (the x86 NCHWc layout transformer reordering a
    Conv weight, Conv+BatchNormalization fusion, constant folding: measured, see docs/tee.md): ONNX
    Runtime then looks for the weight's external file, and the layout's location is a directory
    (``OpenRandomAccessFile Random-access reads require a regular file``). Such a model is loaded
    again with the weights handed over by ``add_external_initializers``: ONNX Runtime puts them into
    the graph as in-memory tensors (no file, no descriptor), so every optimiser sees them exactly as
    in ``InferenceSession(path)``, and copies them into its own memory (peak about 2x the model). Both
    ways run the graph that plain ONNX Runtime runs with the same options, so outputs are the same to
    the bit (tests/models/). A model refused both ways is ``TEE_MODEL_INVALID`` with the second
    refusal's cause, which is the one plain ONNX Runtime would give. ``modes`` (the order of the
    attempts) lets bench/real_models.py measure one way alone."""
    view = buffer.view()
    parsed = onnx_layout.parse(view)
    graph = bytes(parsed.graph)
    first: BaseException | None = None
    for mode in modes:
        so = session_options(prepack=prepack, intra_op_threads=intra_op_threads)
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(empty_dir))
        names, values = _weights(buffer, parsed)
        if mode != modes[-1]:
            so.log_severity_level = 4  # a refusal here is expected, not an error: the last attempt logs real ones
        if mode == IN_PLACE:
            for name, value in zip(names, values, strict=True):
                so.add_initializer(name, value)
        else:
            so.add_external_initializers(names, values)
        try:
            session = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            values.clear()
            if mode != modes[-1] and parsed.tensors:
                first = exc
                continue
            raise TeeError(f"ONNX Runtime refused the model: {model_cause(exc)}", code=E.MODEL_INVALID) from exc
        if first is not None:
            log.info("model weights copied by ONNX Runtime: an optimiser reads them at session creation (%s)",
                     model_cause(first, 200))
        return session, values, mode
    raise AssertionError("unreachable")


def tensor_outputs(name: str, version: str, outputs: list[Any]) -> list[str]:
    """The names of the outputs that can cross the boundary (tensors of a supported dtype). The
    others are logged with the reason, once per model creation; none at all is
    ``TEE_OUTPUT_UNSUPPORTED`` (ONNX Runtime would compute every output for an empty list)."""
    crossing = []
    for o in outputs:
        if o.type in _ORT_TYPES:
            crossing.append(o.name)
            continue
        hint = " (a scikit-learn ZipMap: convert the classifier with options={'zipmap': False})" \
            if str(o.type).startswith("seq(map(") else ""
        log.warning("model %s %s: output %r of type %s cannot cross the TEE boundary and is not returned%s",
                    name, version, str(o.name)[:80], str(o.type)[:80], hint)
    if not crossing:
        raise TeeError(f"model {name} {version}: none of its outputs is a tensor that can cross the TEE boundary "
                       "(sequences and maps cannot; convert classifiers with zipmap=False)",
                       code=E.OUTPUT_UNSUPPORTED)
    return crossing


def release_copied(model: LoadedModel) -> None:
    """A session made with copied weights (:data:`COPIED`) computes on ONNX Runtime's own copies:
    overwrite the TEE's decrypted buffer and give its pages back (about one model size), keeping the
    mapping until close. Called once the buffer has served its last purpose (sealing, at install).
    Never for :data:`IN_PLACE` sessions, which compute on the buffer itself. That ONNX Runtime holds
    copies is checked by tests/models: every copied corpus model answers bit-identically after it."""
    if model.weights == COPIED:
        model.ortvalues.clear()
        model.buffer.release()


@dataclass
class _Handle:
    model: LoadedModel
    owner: int  # pid


class ModelManager:
    def __init__(self, empty_dir: Path, *, intra_op_threads: int = 0) -> None:
        self.empty_dir = empty_dir
        self.intra_op_threads = intra_op_threads
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str, bool], LoadedModel] = {}
        self._handles: dict[int, _Handle] = {}
        self._warm: dict[str, LoadedModel] = {}  # validated at install, not yet loaded by anyone

    # -- creation ----------------------------------------------------------------------------

    def make(self, name: str, version: str, package_id: str, buffer: SecureBuffer, *, prepack: bool) -> LoadedModel:
        try:
            session, values, weights = create_session(buffer, prepack=prepack, empty_dir=self.empty_dir,
                                                      intra_op_threads=self.intra_op_threads)
        except BaseException:
            buffer.close()
            raise
        outputs = tuple(_spec(o) for o in session.get_outputs())
        inputs = tuple(_spec(i) for i in session.get_inputs())
        required = frozenset(i.name for i in session.get_inputs() if not i.type.startswith("optional"))
        try:
            crossing = tensor_outputs(name, version, session.get_outputs())
        except BaseException:
            del session
            values.clear()
            buffer.close()
            raise
        return LoadedModel(name, version, package_id, prepack, buffer, session, values, inputs, outputs,
                           crossing, frozenset(i.name for i in inputs), required, weights=weights)

    def keep_warm(self, model: LoadedModel) -> None:
        """An install just validated (and sealed) this model: keep its session for the next ``load``."""
        release_copied(model)
        with self._lock:
            old = self._warm.pop(model.name, None)
            self._warm[model.name] = model
        if old is not None and old is not model:
            old.close()

    def drop_warm(self, name: str) -> None:
        with self._lock:
            old = self._warm.pop(name, None)
        if old is not None:
            old.close()

    # -- handles -----------------------------------------------------------------------------

    def load(self, name: str, version: str, package_id: str, owner: int, *, prepack: bool,
             unseal: Any) -> ModelHandle:
        """A handle on (name, version); shares a loaded session, adopts the warm one, or unseals."""
        key = (name, version, prepack)
        with self._lock:
            model = self._models.get(key)
            if model is None:
                warm = self._warm.get(name)
                if warm is not None and warm.version == version and warm.prepack == prepack:
                    model = self._models[key] = self._warm.pop(name)
        if model is None:
            model = self.make(name, version, package_id, unseal(), prepack=prepack)
            release_copied(model)
            with self._lock:
                existing = self._models.get(key)
                if existing is None:
                    self._models[key] = model
                else:  # another thread loaded it meanwhile
                    model.close()
                    model = existing
        with self._lock:
            model.refs += 1
            handle = secrets.randbits(62) + 1
            self._handles[handle] = _Handle(model, owner)
        return ModelHandle(handle, name, version, model.inputs, model.outputs, package_id, prepack)

    def _get(self, handle: int, owner: int) -> LoadedModel:
        h = self._handles.get(handle)  # one dict read (atomic): no lock on the per-call path
        if h is None or h.owner != owner:
            raise TeeError("unknown model handle", code=E.UNKNOWN_HANDLE)
        return h.model

    def infer(self, handle: int, owner: int, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """Run the model on ``feeds`` (views of the received frame, handed to ONNX Runtime as they are)."""
        model = self._get(handle, owner)
        with model.lock:
            if model.active < 0:
                raise TeeError("model was unloaded", code=E.UNKNOWN_HANDLE)
            model.active += 1
        try:
            if not model.input_names.issuperset(feeds):
                unknown = sorted(feeds.keys() - model.input_names)
                raise TeeError(f"model has no input(s) {unknown}", code=E.INPUT_INVALID)
            if not model.required_inputs.issubset(feeds):
                missing = sorted(model.required_inputs - feeds.keys())
                raise TeeError(f"required input(s) {missing} missing", code=E.INPUT_INVALID)
            names = model.tensor_outputs
            try:
                # the checks InferenceSession.run adds in Python (inputs present, no foreign OrtValues,
                # no graph capture) are done above or cannot apply: call the binding directly
                results = model.run(names, feeds, None)
            except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ValueError) as exc:
                raise TeeError(f"ONNX Runtime refused the inputs: {model_cause(exc)}", code=E.INPUT_INVALID) from exc
            except Exception as exc:
                raise TeeError(f"inference failed: {model_cause(exc)}", code=E.INFER_FAILED) from exc
            return dict(zip(names, results, strict=True))
        finally:
            with model.lock:
                model.active -= 1
                if model.closing and not model.active:
                    model.cond.notify_all()

    def unload(self, handle: int, owner: int) -> None:
        with self._lock:
            h = self._handles.get(handle)
            if h is None or h.owner != owner:
                raise TeeError("unknown model handle", code=E.UNKNOWN_HANDLE)
            del self._handles[handle]
            closing = self._release(h.model)
        if closing is not None:
            closing.close()

    def _release(self, model: LoadedModel) -> LoadedModel | None:
        model.refs -= 1
        if model.refs > 0:
            return None
        self._models.pop((model.name, model.version, model.prepack), None)
        return model

    def release_owner(self, owner: int) -> int:
        """The owner's last connection closed: release every handle it held."""
        closing: list[LoadedModel] = []
        with self._lock:
            mine = [hid for hid, h in self._handles.items() if h.owner == owner]
            for hid in mine:
                m = self._release(self._handles.pop(hid).model)
                if m is not None:
                    closing.append(m)
        for m in closing:
            m.close()
        return len(mine)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "loaded": [{"name": m.name, "version": m.version, "prepacked": m.prepack, "handles": m.refs,
                            "bytes": m.buffer.size, "locked": m.buffer.locked, "weights": m.weights,
                            "released": m.buffer.released}
                           for m in self._models.values()],
                "warm": [{"name": m.name, "version": m.version, "bytes": m.buffer.size} for m in self._warm.values()],
            }

    def close(self) -> None:
        with self._lock:
            models = list(self._models.values()) + list(self._warm.values())
            self._models.clear()
            self._warm.clear()
            self._handles.clear()
        for m in models:
            m.close()
