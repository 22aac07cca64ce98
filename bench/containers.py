"""Containers: image sizes, the demo in containers, and twin patch -> serving against process mode.

- Image sizes per module and platform: every image `edb images build` made (label
  ``org.edb.platform``), as Docker reports them (uncompressed, layers shared with the base counted).
- ``make demo-containers`` wall time: ``edb demo --runtime docker`` on a fresh state directory
  (images already built: their build time is reported by `edb images build`, not here).
- Twin patch -> serving, container mode against process mode in the same run: the demo's own
  measurement (``roll out v1``: install in the TEE + load, ``roll out v2``: hot swap), for both
  runtimes, alternating ``--repeat`` times; the ratio is container / process of the medians (target
  <= 1.2).
- arm64 smoke test under emulation (``--arm64``): ``make test-arm64``'s run (the demo with the TEE and
  runner in arm64v8 images under qemu), its wall time; skipped unless asked (slow).

Usage: ``.venv/bin/python bench/containers.py [--repeat 2] [--arm64]``. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# the demo's "... serving [<version>] <seconds> s after the twin patch" (rollout v1, then the hot swap)
# the demo's "results and telemetry arrive upstream" step: "... N answers in T s, p50 X ms"
ANSWER_P50 = re.compile(r"answers in [\d.]+ s, p50 ([\d.]+) ms")
SERVING = re.compile(r"serving\s+(?:\d+\.\d+\.\d+\s+)?([\d.]+)\s+s\s+after\s+the\s+twin\s+patch")


def image_sizes() -> dict[str, dict[str, float]]:
    import docker

    client = docker.from_env()
    sizes: dict[str, dict[str, float]] = {}
    for image in client.images.list(filters={"label": "org.edb.kind=module", "dangling": False}):
        labels = image.labels
        platform = labels.get("org.edb.platform", "?")
        sizes.setdefault(platform, {})[labels["org.edb.module"]] = round(image.attrs["Size"] / 1e6, 1)
    return sizes


def run_demo(runtime: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix=f"edb-bench-{runtime}-"))
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "edb.cli.main", "demo", "--runtime", runtime,
                          "--state-dir", str(state / "demo")], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=3600, check=False, cwd=ROOT)
    wall = time.monotonic() - started
    text = out.stdout
    serving = [float(m) for m in SERVING.findall(text)]
    # the demo keeps the stack's volumes (the device's state) for a next `up`: the bench does not
    subprocess.run([sys.executable, "-m", "edb.cli.main", "local", "down", "--state-dir", str(state / "demo"),
                    "--volumes", "--json"], capture_output=True, timeout=300, check=False, cwd=ROOT)
    subprocess.run(["rm", "-rf", str(state)], check=False)
    passed = re.search(r"(\d+)/(\d+) steps in", text)
    flat = " ".join(text.replace("\u2502", " ").split())  # the summary table's cells, unwrapped
    return {"runtime": runtime, "ok": out.returncode == 0, "wall_s": round(wall, 1),
            "steps": passed.group(0) if passed else None,
            "v1_serving_s": serving[0] if serving else None,
            "v2_serving_s": serving[1] if len(serving) > 1 else None,
            "answer_p50_ms": float(p50.group(1)) if (p50 := ANSWER_P50.search(flat)) else None,
            "tail": "" if out.returncode == 0 else text[-1500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--arm64", action="store_true", help="also run the arm64 smoke test (slow)")
    args = parser.parse_args()
    load = os.getloadavg()
    sizes = image_sizes()
    print(f"image sizes (MB): {json.dumps(sizes)}")
    runs: list[dict[str, Any]] = []
    for i in range(args.repeat):
        for runtime in ("process", "docker"):  # alternating: the same load for both
            result = run_demo(runtime)
            runs.append(result)
            print(f"run {i + 1} {runtime}: ok={result['ok']} wall {result['wall_s']} s, v1 serving "
                  f"{result['v1_serving_s']} s, v2 {result['v2_serving_s']} s {result['tail']}")

    def median(runtime: str, key: str) -> float | None:
        values = [r[key] for r in runs if r["runtime"] == runtime and r[key] is not None]
        return round(statistics.median(values), 2) if values else None

    summary: dict[str, Any] = {
        "bench": "containers", "load_avg_1m_at_start": round(load[0], 2), "image_sizes_mb": sizes,
        "demo_containers_wall_s": median("docker", "wall_s"), "demo_process_wall_s": median("process", "wall_s"),
        "v1_serving_s": {"process": median("process", "v1_serving_s"), "docker": median("docker", "v1_serving_s")},
        "v2_serving_s": {"process": median("process", "v2_serving_s"), "docker": median("docker", "v2_serving_s")},
        "all_ok": all(r["ok"] for r in runs), "repeat": args.repeat,
    }
    summary["answer_p50_ms"] = {"process": median("process", "answer_p50_ms"),
                                "docker": median("docker", "answer_p50_ms")}
    v1 = summary["v1_serving_s"]
    summary["v1_ratio_docker_vs_process"] = round(v1["docker"] / v1["process"], 2) \
        if v1["docker"] and v1["process"] else None
    v2 = summary["v2_serving_s"]
    summary["v2_ratio_docker_vs_process"] = round(v2["docker"] / v2["process"], 2) \
        if v2["docker"] and v2["process"] else None
    if args.arm64:
        arm = run_demo("docker", {"EDB_IMAGE_PLATFORM": "arm64v8", "EDB_DEMO_TIMEOUT_SCALE": "8",
                                  "EDB_IMAGE_PLATFORM_MODULES": "tee_service,inference_runner"})
        print(f"arm64 smoke: ok={arm['ok']} wall {arm['wall_s']} s {arm['tail']}")
        summary["arm64_smoke"] = {k: arm[k] for k in ("ok", "wall_s", "steps", "v1_serving_s", "v2_serving_s",
                                                        "answer_p50_ms")}
    else:
        summary["arm64_smoke"] = None
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
