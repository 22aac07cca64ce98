"""``edb demo-vision`` (``make demo-vision``): a real pretrained vision model, served from the TEE
to a camera module over the Open Inference Protocol, on the local stack; every step verified.

The model is PaddleOCR's text orientation classifier (``ch_ppocr_mobile_v2.0_cls``, Apache-2.0),
as the ``rapidocr`` wheel ships it (a test dependency; nothing is downloaded at run time). The demo
packages and signs it, rolls it out, deploys ``deployment.vision.template.json`` (the module suite
with ``camera_sensor`` instead of the digits sensor, every result routed upstream), checks the
endpoint (health, metadata, an answer bit-identical to ONNX Runtime in-process, bad requests
refused with their codes while the model keeps serving), lets the camera send rendered text images
(upright or upside down) and sees them answered, with results and metrics upstream. Same rules as
``edb demo`` (whose helpers it shares): a summary table, exit 0 only if every step was verified.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from edb_cloud.demo import Demo, StepFailed, _wait, run_and_exit
from edb_cloud.demo_checks import Upstream, metrics_with_results

VISION_NAME = "textorient"
VERSION = "1.0.0"
MODEL_FILE = "ch_ppocr_mobile_v2.0_cls_mobile.onnx"
WHEEL = "rapidocr"
VISION_MODULES = ("package_installer", "inference_runner", "telemetry_reporter", "camera_sensor", "tee_service")


def wheel_model() -> Path:
    """The pretrained model file inside the installed wheel (a clear error if it is not installed)."""
    spec = importlib.util.find_spec(WHEEL)
    if spec is None or spec.origin is None:
        raise StepFailed(f"the {WHEEL} wheel is not installed (make setup installs the test extra)")
    path = Path(spec.origin).parent / "models" / MODEL_FILE
    if not path.is_file():
        raise StepFailed(f"{path} is not in the installed {WHEEL} wheel")
    return path


def result_messages(events: list[Upstream], model: str) -> list[Upstream]:
    """Per-input result messages (JSON, messageType=result) answered by ``model`` (name)."""
    return [e for e in events if e.application.get("messageType") == "result" and e.is_json_utf8
            and (e.payload.get("model") or {}).get("name") == model]


class VisionDemo(Demo):
    name = VISION_NAME
    modules = VISION_MODULES

    def run(self) -> bool:
        steps = [
            ("fresh state and publisher PKI", self.prepare),
            ("start the local stack", self.stack_up),
            ("device provisioned (TEE identity)", self.device),
            ("KEK and signing key in Key Vault", self.keys),
            ("a pretrained vision model from a PyPI wheel", self.model),
            ("build and sign the package", self.build),
            ("publish to Blob storage (Azurite)", self.publish),
            ("deploy the vision suite (camera_sensor)", self.deploy),
            ("roll out the model", self.rollout),
            ("Open Inference Protocol: health, metadata, bit-identical answer", self.endpoint),
            ("bad requests refused with codes, the model keeps serving", self.refusals),
            ("camera images answered through the endpoint", self.camera),
            ("results and metrics arrive upstream", self.upstream),
        ]
        return self.run_steps(steps)

    # -- helpers -----------------------------------------------------------------------------------
    def template(self) -> Path:
        return Path(__file__).resolve().parents[2] / "deployment.vision.template.json"

    def after_deploy(self) -> None:
        self.s.hub.patch_module_desired(self.s.device_id, "telemetry_reporter", {"metricsIntervalSeconds": 2})
        self.s.hub.patch_module_desired(self.s.device_id, "camera_sensor", {"camera": {"intervalMs": 100}})

    def _url(self) -> str:
        return self.s.config.require("EDB_OIP_URL", "the runner's Open Inference Protocol endpoint").rstrip("/")

    def _camera(self) -> dict[str, Any]:
        return dict(self._twin("camera_sensor").reported.get("camera") or {})

    def _infer(self, body: bytes, headers: dict[str, str], model: str = VISION_NAME) -> Any:
        import requests

        return requests.post(f"{self._url()}/v2/models/{model}/infer", data=body, headers=headers, timeout=30)

    # -- steps -------------------------------------------------------------------------------------
    def model(self) -> str:
        from edb.ort import onnxruntime as ort

        path = wheel_model()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta()
        licence = importlib.metadata.metadata(WHEEL).get("License-Expression") or "see the wheel"
        inputs = [(i.name, i.shape) for i in session.get_inputs()]
        outputs = [(o.name, o.shape) for o in session.get_outputs()]
        self.s.packages["model"] = path
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return (f"{MODEL_FILE} from {WHEEL} {importlib.metadata.version(WHEEL)} ({licence}), "
                f"{path.stat().st_size} B, sha256 {digest}..., producer {meta.producer_name}; "
                f"inputs {inputs}, outputs {outputs}")

    def build(self) -> str:
        import datetime as dt

        from edb.cpk import open_package, verify_package
        from edb.pki.certs import load_pem_certificates_file
        from edb_cloud.packaging import build_package
        from edb_cloud.publisher import pki_dir

        model = self.s.packages.pop("model")
        roots = load_pem_certificates_file(pki_dir(self.s.config) / "root.pem")
        path = self.s.config.cloud_dir / "packages" / f"{VISION_NAME}-{VERSION}.cpk"
        built = build_package(self.s.config, model, path, package_id=VISION_NAME, version=VERSION,
                              security_version=1, devices=[self.s.device_id], device_classes=[])
        with open_package(path) as reader:
            verify_package(reader, trust_roots=roots, now=dt.datetime.now(dt.UTC), device_id=self.s.device_id)
        self.s.packages[VERSION] = path
        policy = self.pinned_release_policy(VISION_NAME)
        return f"{VERSION} svn 1 {built.file_size} B; signature verifies; release policy {policy}"

    def rollout(self) -> str:
        seconds, outcome = self._rollout(VERSION)
        if outcome.state != "installed" or outcome.serving != VERSION:
            raise StepFailed(f"{outcome.state}, serving {outcome.serving}: {outcome.reported}")
        info = _wait("the runner's reported modelInfo",
                     lambda: self._twin("inference_runner").reported.get("modelInfo"), 20)
        return (f"{VISION_NAME} {VERSION} installed and serving {seconds:.1f} s after the twin patch; reported "
                f"modelInfo: producer {info.get('producer')!r}, opsets {info.get('opsets')}, "
                f"inputs {info.get('inputs')}")

    def endpoint(self) -> str:
        import requests
        from camera_sensor.images import FrameSource, to_tensor
        from camera_sensor.oip_client import HEADER_LENGTH, infer_request, read_outputs

        from edb.ort import onnxruntime as ort

        url = self._url()
        for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{VISION_NAME}/ready"):
            status = requests.get(url + path, timeout=10).status_code
            if status != 200:
                raise StepFailed(f"GET {path}: {status}")
        meta = requests.get(f"{url}/v2/models/{VISION_NAME}", timeout=10).json()
        if meta.get("versions") != [VERSION] or meta["inputs"][0]["datatype"] != "FP32":
            raise StepFailed(f"model metadata: {meta}")
        source = FrameSource(seed=2026)
        frames = [source.next() for _ in range(4)]
        x = to_tensor([f.image for f in frames])
        body, headers = infer_request(x, request_id="demo-check")
        response = self._infer(body, headers)
        if response.status_code != 200:
            raise StepFailed(f"infer: {response.status_code} {response.text[:300]}")
        got = next(iter(read_outputs(response.content, response.headers.get(HEADER_LENGTH)).values()))
        session = ort.InferenceSession(str(wheel_model()), providers=["CPUExecutionProvider"])
        want = session.run(None, {"x": x})[0]
        if got.dtype != want.dtype or not np.array_equal(got, want):
            raise StepFailed("the endpoint's answer differs from ONNX Runtime in-process")
        labels = [f.label for f in frames]
        return (f"{url}: live, ready, metadata {meta['inputs'][0]}; 4 images ({x.nbytes} B, binary extension) "
                f"answered bit-identical to ONNX Runtime in-process: orientation {got.argmax(1).tolist()} "
                f"(drawn {labels})")

    def refusals(self) -> str:
        x = np.zeros((1, 3, 48, 192), np.float32)
        head = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 48, 192],
                            "parameters": {"binary_data_size": x.nbytes}}]}
        raw = json.dumps(head).encode()
        good = (raw + x.tobytes(), {"Inference-Header-Content-Length": str(len(raw))})
        lie = dict(head, inputs=[dict(head["inputs"][0], parameters={"binary_data_size": x.nbytes + 4})])
        lie_raw = json.dumps(lie).encode()
        wrong_type = dict(head, inputs=[dict(head["inputs"][0], datatype="FP64", shape=[1, 3, 48, 96])])
        wt_raw = json.dumps(wrong_type).encode()
        cases = [
            ("a length lie", lie_raw + x.tobytes(), {"Inference-Header-Content-Length": str(len(lie_raw))},
             VISION_NAME, 400),
            ("a dtype the model does not take", wt_raw + x.tobytes(),
             {"Inference-Header-Content-Length": str(len(wt_raw))}, VISION_NAME, 400),
            ("a model that is not served", *good, "digits", 404),
        ]
        seen = []
        for what, body, headers, model, status in cases:
            response = self._infer(body, headers, model)
            code = response.json().get("code") if response.headers.get("Content-Type", "").startswith(
                "application/json") else None
            if response.status_code != status or not code:
                raise StepFailed(f"{what}: {response.status_code} {response.text[:200]}")
            seen.append(f"{what} -> {response.status_code} {code}")
        if self._infer(*good).status_code != 200:
            raise StepFailed("the model stopped answering after the refusals")
        return "; ".join(seen) + "; a good request still answers 200"

    def camera(self) -> str:
        first = _wait("the camera's reported counts", self._camera, 20)
        # the first report with an answer in it: requests before the model served (404/503) are
        # counted by then, and the camera sends one request at a time, so later errors are new
        def answering() -> dict[str, Any] | None:
            now = self._camera()
            return now if now.get("answered", 0) > first.get("answered", 0) else None

        start = _wait("the camera's first answers", answering, 20)

        def answered() -> dict[str, Any] | None:
            now = self._camera()
            return now if now.get("answered", 0) - start.get("answered", 0) >= 30 else None

        now = _wait("30 camera images answered", answered, 60)
        n = now["answered"] - start.get("answered", 0)
        errors = now.get("errors", 0) - start.get("errors", 0)
        correct = now.get("correct", 0) - start.get("correct", 0)
        if errors:
            raise StepFailed(f"{errors} camera requests failed: {now.get('lastError')}")
        if correct < 0.8 * n:
            raise StepFailed(f"only {correct}/{n} orientations right")
        return (f"{n} rendered text images (1 x 3 x 48 x 192 float32 each) answered over the Open Inference "
                f"Protocol, 0 errors; orientation right for {correct}/{n}")

    def upstream(self) -> str:
        def found() -> tuple[list[Upstream], list[Upstream]] | None:
            events = self._poll_upstream()
            results = [r for r in result_messages(events, VISION_NAME) if r.payload.get("error") is None]
            metrics = metrics_with_results(events, f"{VISION_NAME}@{VERSION}")
            return (results, metrics) if results and metrics else None

        results, metrics = _wait("result and metrics messages upstream", found, 30)
        sample = results[-1].payload
        tensors = sample.get("tensors") or {}
        if not tensors or any(t.get("dtype") != "float32" for t in tensors.values()):
            raise StepFailed(f"a result without its output shapes and dtypes: {sample}")
        window = metrics[-1].payload["inference"]
        return (f"{len(results)} per-input results upstream (messageType=result, e.g. {sample['requestId']}: "
                f"tensors {tensors}); metrics: {window['count']} answers in the last window, "
                f"byVersion {window['byVersion']}")


@click.command(name="demo-vision")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".edb/demo-vision"),
              show_default=True, help="Fresh state directory for the demo's own stack (wiped first).")
@click.option("--keep-running", is_flag=True, help="Leave the stack running at the end (to explore it).")
def demo_vision(state_dir: Path, keep_running: bool) -> None:
    """A pretrained vision model served from the TEE to a camera module over the Open Inference Protocol."""
    run_and_exit(lambda echo: VisionDemo(state_dir, keep_running=keep_running, echo=echo))
