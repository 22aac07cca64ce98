"""Benchmark: a progressive rollout to a simulated fleet on one machine (``edb fleet simulate``).

For each N in ``BENCH_FLEET_SIZES`` (default "50,200"), on a fresh local stack:
1. publish digits 1.0.0, 2.0.0, 3.0.0 (security version 1), deploy a base to ``tags.fleet='sim'``,
   start N devices (``--fail-load`` on a few for 3.0.0 only);
2. herd: 1.0.0 to every device at once (one phase, no soak): time to 100 % serving; this is also the
   key release herd (N devices asking within seconds): p50/p95 of each device's whole release as the
   device measures it (nonce, evidence, release, retries), service-side denials by code;
3. the timed rollout: 2.0.0 with a 3-phase plan (canary 5 %, 25 %, rest) whose gates are at their
   minimum soak (``BENCH_SOAK_S``, default 5 s each): start to 100 % serving, of which gates (soak) time;
4. the breach: 3.0.0 with a canary of max(5, 5 % N) devices of which 20 % fail to load 3.0.0: the time
   from the first failure report to the halt and to the canary serving 2.0.0 again; every 0.5 s
   during steps 2-4 the fleet is sampled: the most devices without a serving model at any sample.
Baseline in the same run: the hub stand-in's CPU while the fleet is idle (connected, frames every
2 s) against during the rollouts; the machine's load average at the start.

The last line of output is one JSON object.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def edb(*args: str, timeout: float = 600.0) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDB_")}
    out = subprocess.run([sys.executable, "-m", "edb.cli.main", *args, "--json"], capture_output=True, text=True,
                         timeout=timeout, check=False, env=env)
    try:
        doc: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"{args}: {out.stdout[-800:]} {out.stderr[-800:]}") from None
    return doc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 1)


class Sampler(threading.Thread):
    """Every 0.5 s: which devices serve which version (runner twins; a failed load of a newer one
    still serves the old version, reported apart in model.lastLoadFailure) and when a device first
    reported the 3.0.0 load failure."""

    def __init__(self, hub: Any, ids: set[str]) -> None:
        super().__init__(daemon=True)
        self.hub, self.ids = hub, ids
        self.stop = threading.Event()
        self.max_without = 0
        self.samples = 0
        self.latest: dict[str, str] = {}
        self.first_failure: float | None = None
        self.ever_served: set[str] = set()
        self.max_swapping = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                serving, swapping = {}, set()
                for twin in self.hub.module_twins("inference_runner"):
                    model = twin.reported.get("model") or {}
                    if twin.device_id in self.ids and model.get("state") in ("serving", "failed") \
                            and model.get("version"):
                        serving[twin.device_id] = str(model["version"])
                    elif twin.device_id in self.ids and model.get("state") == "loading":
                        # the runner loads the new version beside the one it serves and swaps after:
                        # the twin names the version being loaded, the previous one still answers
                        swapping.add(twin.device_id)
                    # the runner reports a failed load apart (model.lastLoadFailure) while the old version
                    # serves; "failed" when nothing serves (or from a runner of before that field)
                    failed = model.get("lastLoadFailure") or (model.get("state") == "failed" and model.get("error"))
                    if twin.device_id in self.ids and failed and self.first_failure is None:
                        self.first_failure = time.time()
                self.latest = serving
                self.samples += 1
                # a device counts once it has served a model: before its first install it had none to lose
                self.ever_served.update(serving)
                self.max_without = max(self.max_without, len(self.ever_served - set(serving) - swapping))
                self.max_swapping = max(self.max_swapping, len(swapping))
            except Exception:  # noqa: S112 - a failed sample is skipped, the next one counts
                continue
            finally:
                self.stop.wait(0.5)


def wait_all(sampler: Sampler, version: str, count: int, timeout: float) -> float | None:
    started = time.time()
    while time.time() - started < timeout:
        if sum(1 for v in sampler.latest.values() if v == version) >= count:
            return time.time()
        time.sleep(0.2)
    return None


def plan_file(path: Path, phases: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"target": "tags.fleet='sim'", "phases": phases}))
    return path


def run_size(n: int, soak_s: float) -> dict[str, Any]:
    from edb.pki.devpki import init_publisher_pki
    from edb_cloud.config import CloudConfig
    from edb_cloud.iothub import HubService
    from edb_local.fleet.spec import pick

    state = Path(tempfile.mkdtemp(prefix="edb-bench-fleet-", dir="/tmp"))
    cloud = ("cloud", "--state-dir", str(state))
    result: dict[str, Any] = {"devices": n}
    try:
        init_publisher_pki(state / "pki")
        assert edb("local", "up", "--state-dir", str(state))["ok"]
        config = CloudConfig.load(state, environ={})
        hub = HubService(config.iothub_connection_string, config.ca_cert)
        hub_pid = int((state / "run" / "hub.pid").read_text().split()[0])
        edb(*cloud, "init")
        edb(*cloud, "train-demo", "--variant", "v1")
        model = str(next((state / "cloud" / "models").glob("*.onnx")))
        for version in ("1.0.0", "2.0.0", "3.0.0"):
            edb(*cloud, "build", model, "--name", "digits", "--version", version, "--security-version", "1",
                "--device-class", "trustbox-edge-201")
            edb(*cloud, "publish", str(state / "cloud" / "packages" / f"digits-{version}.cpk"))
        edb(*cloud, "deploy", "--target-condition", "tags.fleet='sim'", "--deployment-id", "fleet-base")
        ids = [f"sim-{i:04d}" for i in range(n)]
        canary_size = max(5, math.ceil(0.05 * n))
        failing_count = max(1, round(0.2 * canary_size))
        fail_fraction = failing_count / n
        started = time.time()
        fleet = edb("fleet", "simulate", "--devices", str(n), "--state-dir", str(state), "--fail-load",
                    str(fail_fraction), "--fail-load-version", "3.0.0", "--devices-per-process", "50",
                    "--tees-per-process", "50")
        assert fleet.get("ok"), fleet
        result["simulateSeconds"] = round(time.time() - started, 1)
        sampler = Sampler(hub, set(ids))
        sampler.start()
        time.sleep(10)  # the fleet connects and settles
        idle_cpu0, idle_t0 = cpu_seconds(hub_pid), time.time()
        time.sleep(10)
        result["hubCpuIdlePct"] = round(100 * (cpu_seconds(hub_pid) - idle_cpu0) / (time.time() - idle_t0), 1)

        gates = {"maxInstallFailureRate": 0.1, "minReporting": 1.0, "timeoutSeconds": 600}
        kr_file = state / "fleet" / "keyrelease.jsonl"
        busy_cpu0, busy_t0 = cpu_seconds(hub_pid), time.time()
        # 2. the herd: 1.0.0 to every device at once
        herd_plan = plan_file(state / "herd.json", [{"name": "all", "percent": 100,
                                                     "gates": {**gates, "minSoakSeconds": 0}}])
        t0 = time.time()
        herd = edb(*cloud, "rollout", "digits", "--version", "1.0.0", "--plan", str(herd_plan))
        done = wait_all(sampler, "1.0.0", n, 400)
        result["herd"] = {"status": herd.get("status"), "seconds": round(done - t0, 1) if done else None}
        releases = [json.loads(line) for line in kr_file.read_text().splitlines()] if kr_file.exists() else []
        ok_ms = [r["ms"] for r in releases if r["outcome"] == "released"]
        outcomes: dict[str, int] = {}
        for r in releases:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        result["keyRelease"] = {"releases": len(ok_ms), "p50Ms": pct(ok_ms, 0.5), "p95Ms": pct(ok_ms, 0.95),
                                "maxMs": pct(ok_ms, 1.0), "outcomes": outcomes,
                                "devicesReleased": len({r["device"] for r in releases if r["outcome"] == "released"})}
        # 3. the timed 3-phase rollout
        plan3 = plan_file(state / "plan3.json", [
            {"name": "canary", "percent": 5, "gates": {**gates, "minSoakSeconds": soak_s}},
            {"name": "early", "percent": 25, "gates": {**gates, "minSoakSeconds": soak_s}},
            {"name": "rest", "percent": 100, "gates": {**gates, "minSoakSeconds": soak_s}}])
        t0 = time.time()
        rollout = edb(*cloud, "rollout", "digits", "--version", "2.0.0", "--plan", str(plan3))
        done = wait_all(sampler, "2.0.0", n, 400)
        result["rollout"] = {"status": rollout.get("status"), "secondsTo100PctServing":
                             round(done - t0, 1) if done else None, "gateSoakSeconds": 3 * soak_s,
                             "phases": [5, 25, 100]}
        # 4. the breach: 20 % of the canary fails to load 3.0.0
        failing = sorted(pick(ids, fail_fraction, "fail-load"))
        healthy = [d for d in ids if d not in failing][: canary_size - len(failing)]
        canary = failing + healthy
        condition = " OR ".join(f"deviceId = '{d}'" for d in canary)
        breach_plan = plan_file(state / "breach.json", [
            {"name": "canary", "condition": condition, "gates": {**gates, "maxInstallFailureRate": 0.0,
                                                                  "minSoakSeconds": soak_s}},
            {"name": "rest", "percent": 100, "gates": {**gates, "minSoakSeconds": soak_s}}])
        sampler.first_failure = None
        t0 = time.time()
        breach = edb(*cloud, "rollout", "digits", "--version", "3.0.0", "--plan", str(breach_plan))
        halted_at = time.time()
        back = None
        while time.time() - halted_at < 300:
            if all(sampler.latest.get(d) == "2.0.0" for d in canary):
                back = time.time()
                break
            time.sleep(0.2)
        first = sampler.first_failure
        status = edb(*cloud, "rollout", "status", "digits")
        result["breach"] = {
            "status": breach.get("status"), "reason": (breach.get("reason") or "")[:160],
            "canary": len(canary), "failingInCanary": len(failing),
            "haltedPhase": (status.get("phase") or {}).get("name"),
            "firstFailureToHaltSeconds": round(halted_at - first, 1) if first else None,
            "firstFailureToRolledBackSeconds": round(back - first, 1) if first and back else None,
            "startToHaltSeconds": round(halted_at - t0, 1),
            "devicesOutsideCanaryTouched": sum(1 for d in ids if d not in canary and sampler.latest.get(d) != "2.0.0"),
        }
        result["hubCpuDuringRolloutsPct"] = round(100 * (cpu_seconds(hub_pid) - busy_cpu0) / (time.time() - busy_t0), 1)
        sampler.stop.set()
        sampler.join(5)
        result["maxDevicesWithoutServingModel"] = sampler.max_without
        result["maxDevicesSwappingModel"] = sampler.max_swapping
        result["samples"] = sampler.samples
    finally:
        edb("fleet", "down", "--state-dir", str(state), timeout=180)
        edb("local", "down", "--state-dir", str(state), timeout=180)
        shutil.rmtree(state, ignore_errors=True)
    return result


def main() -> int:
    sizes = [int(s) for s in os.environ.get("BENCH_FLEET_SIZES", "50,200").split(",") if s]
    soak = float(os.environ.get("BENCH_SOAK_S", "5"))
    load = os.getloadavg()
    runs = []
    for n in sizes:
        print(f"fleet of {n} ...", file=sys.stderr, flush=True)
        run = run_size(n, soak)
        print(json.dumps(run), flush=True)
        runs.append(run)
    summary = {"bench": "fleet_rollout", "loadAverageAtStart": [round(v, 2) for v in load],
               "cpus": os.cpu_count(), "soakSeconds": soak, "runs": runs,
               "medianHerdSeconds": statistics.median([r["herd"]["seconds"] or 0 for r in runs]) if runs else None}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
