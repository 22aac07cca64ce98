"""``edb demo`` (``make demo``): the whole blueprint end to end on the local stack, every step verified.

A fresh state directory (default ``.edb/demo``), then: publisher PKI, local stack up (device
provisioned), Key Vault keys, train v1/v2 on the bundled digits, build and sign both packages,
publish to Azurite, deploy the module suite with the manifest, roll out v1, see results and
telemetry arrive upstream, roll out v2 and see the hot swap (nothing dropped or answered twice),
try a tampered package and a rollback to v1's security version (both refused with their codes,
alerts upstream, v2 still serving), print a summary, stop the stack. Exit status 0 only if every
step was verified; a step that cannot be verified fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from edb_cloud.demo_checks import (
    ROLLBACK_CODES,
    TAMPER_CODES,
    Upstream,
    alerts,
    answered_everything,
    metrics_with_results,
)

NAME = "digits"
V1, V2 = "1.0.0", "2.0.0"
MODULES = ("package_installer", "inference_runner", "telemetry_reporter", "simulated_sensor", "tee_service")


class StepFailed(Exception):
    """A step ran but what it had to show did not happen."""


@dataclass
class StepResult:
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class DemoState:
    config: Any = None
    hub: Any = None
    feed: Any = None
    events: list[Upstream] = field(default_factory=list)
    since: int = 0
    releases: dict[str, Any] = field(default_factory=dict)
    packages: dict[str, Path] = field(default_factory=dict)
    device_id: str = ""
    tee_measurement: str | None = None  # from the TEE's device_info: the release policy pins it
    tee_svn: int = 0


def _edb(*args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edb.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _edb_local(command: str, state_dir: Path, timeout: float,
               extra: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess[str], Any]:
    """``edb local <command> --json`` and the status object it prints on its last line."""
    out = _edb("local", command, "--state-dir", str(state_dir), *extra, "--json", timeout=timeout)
    try:
        return out, json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise StepFailed(f"`edb local {command}` printed no status (exit {out.returncode}): "
                         f"{out.stderr[-300:]}") from None


def _timeout_scale() -> float:
    """EDB_DEMO_TIMEOUT_SCALE: waits x N (arm64 images under qemu emulation are several times slower)."""
    try:
        return max(1.0, float(os.environ.get("EDB_DEMO_TIMEOUT_SCALE", "1")))
    except ValueError:
        return 1.0


def _wait(what: str, check: Callable[[], Any], timeout: float, poll: float = 0.5) -> Any:
    timeout *= _timeout_scale()
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(poll)
    raise StepFailed(f"timed out after {timeout:.0f} s waiting for {what}")


class Demo:
    #: the package name the demo rolls out, and the modules its deployment runs (demo_vision overrides)
    name = NAME
    modules: tuple[str, ...] = MODULES

    def __init__(self, state_dir: Path, *, keep_running: bool, echo: Callable[[str], None],
                 runtime: str = "process") -> None:
        self.state_dir = state_dir
        self.runtime = runtime  # "docker": every module (and the TEE) in a container of this tree's images
        # the images' platform (module.json names): EDB_IMAGE_PLATFORM=arm64v8 runs the arm64 images
        # under emulation on an amd64 host (make test-arm64)
        self.platform = os.environ.get("EDB_IMAGE_PLATFORM", "amd64")
        # EDB_IMAGE_PLATFORM_MODULES=tee_service,inference_runner: only those in the platform's images,
        # the others amd64 (the arm64 smoke test runs the TEE and the runner under emulation)
        self.platform_modules = [m for m in os.environ.get("EDB_IMAGE_PLATFORM_MODULES", "").split(",") if m]
        self.keep_running = keep_running
        self.echo = echo
        self.results: list[StepResult] = []
        self.s = DemoState()

    # -- the runner --------------------------------------------------------------------------------
    def step(self, name: str, fn: Callable[[], str]) -> bool:
        started = time.monotonic()
        self.echo(f"[bold]>> {name}[/bold]")
        try:
            detail, ok = fn(), True
        except Exception as exc:  # every failure ends the demo with a red line, never a traceback
            detail, ok = f"{type(exc).__name__}: {exc}", False
        result = StepResult(name, ok, detail, time.monotonic() - started)
        self.results.append(result)
        mark = "[green]PASS[/green]" if ok else "[red]FAIL[/red]"
        self.echo(f"   {mark} {detail} ({result.seconds:.1f} s)")
        return ok

    def run(self) -> bool:
        steps: list[tuple[str, Callable[[], str]]] = [
            ("fresh state and publisher PKI", self.prepare),
            ("start the local stack", self.stack_up),
            ("device provisioned (TEE identity)", self.device),
            ("KEK and signing key in Key Vault", self.keys),
            ("train v1 and v2 on the bundled digits", self.train),
            ("build and sign both packages", self.build),
            ("publish to Blob storage (Azurite)", self.publish),
            ("deploy the module suite with the manifest", self.deploy),
            ("roll out v1", self.rollout_v1),
            ("results and telemetry arrive upstream", self.upstream_v1),
            ("roll out v2: hot swap", self.rollout_v2),
            ("hot swap dropped and duplicated nothing", self.nothing_dropped),
            ("tampered package refused, v2 keeps serving", self.tampered),
            ("rollback to v1's security version refused", self.rollback),
        ]
        if self.runtime == "docker":
            # The TEE is the tee_service container the agent runs (no host TEE service): deploy the
            # module suite first, then read the device's identity from the running TEE. Same steps.
            deploy = next(s for s in steps if s[1] == self.deploy)
            steps.remove(deploy)
            steps.insert(2, deploy)
        return self.run_steps(steps)

    def pinned_release_policy(self, name: str) -> str:
        """Pin what the device attested to: this device, its TEE measurement and security version, and
        the package's first security version (so a revoked lower version can never be released again)."""
        from edb_cloud.publisher import ReleasePins, ensure_release_policy

        if not self.s.tee_measurement:  # the device step reads it from the TEE: never fall back to "any"
            raise StepFailed("no TEE measurement to pin in the release policy")
        pins = ReleasePins((self.s.tee_measurement,), self.s.tee_svn)
        return ensure_release_policy(self.s.config, name, devices=[self.s.device_id], device_classes=[],
                                     min_security_version=1, pins=pins)

    def run_steps(self, steps: list[tuple[str, Callable[[], str]]]) -> bool:
        """Run the steps in order until one fails, show the status, then stop the stack (unless kept)."""
        ok = True
        for name, fn in steps:
            if not self.step(name, fn):
                ok = False
                break
        if self.s.hub is not None:
            self.print_status()
        if not self.keep_running:
            ok = self.step("stop the stack", self.stack_down) and ok
        return ok

    # -- helpers -----------------------------------------------------------------------------------
    def _config(self) -> Any:
        from edb_cloud.config import CloudConfig

        # The demo's own stack only: EDB_* from the caller's shell must not point it elsewhere.
        environ = {k: v for k, v in os.environ.items() if not k.startswith("EDB_")}
        return CloudConfig.load(self.state_dir, environ=environ)

    def _poll_upstream(self) -> list[Upstream]:
        page = self.s.feed.messages(since=self.s.since, limit=500)
        new = [Upstream.from_monitor(item) for item in page.events]
        self.s.since = page.next
        self.s.events.extend(new)
        return self.s.events

    def _release(self, version: str) -> Any:
        return self.s.releases[version]

    def _twin(self, module: str) -> Any:
        return self.s.hub.module_twin(self.s.device_id, module)

    def _serving(self) -> str | None:
        model = self._twin("inference_runner").reported.get("model") or {}
        return model.get("version") if model.get("state") == "serving" else None

    # -- steps -------------------------------------------------------------------------------------
    def prepare(self) -> str:
        from edb.pki.devpki import init_publisher_pki

        if self.state_dir.exists():
            _edb("local", "down", "--state-dir", str(self.state_dir), "--volumes", "--json", timeout=120)
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(parents=True)
        # Before the stack starts, so provisioning pins this publisher root in the device's TEE.
        pki = init_publisher_pki(self.state_dir / "pki")
        return f"state in {self.state_dir}; publisher root {pki.root_cert}"

    def stack_up(self) -> str:
        out, doc = _edb_local("up", self.state_dir, timeout=240,
                              extra=("--runtime", self.runtime) if self.runtime != "process" else ())
        bad = [c["name"] for c in doc.get("components", []) if c.get("state") != "running"]
        if out.returncode != 0 or not doc.get("ok") or bad:
            raise StepFailed(f"components not running: {bad or doc}")
        self.s.config = self._config()
        self.s.device_id = self.s.config.device_id or ""
        from edb_cloud.iothub import HubService
        from edb_local.hub.client import ServiceClient, resolve_settings

        self.s.hub = HubService(self.s.config.iothub_connection_string, self.s.config.ca_cert)
        self.s.feed = ServiceClient(resolve_settings(self.s.config.iothub_connection_string,
                                                     str(self.s.config.ca_cert), environ={}, env_file={}))
        return f"{len(doc['components'])} components running: {', '.join(c['name'] for c in doc['components'])}"

    def device(self) -> str:
        from edb.tee.client import TeeClient

        socket = self.s.config.require("EDB_TEE_SOCKET", "the TEE socket")
        if self.runtime == "docker":  # the tee_service container opens it once it has started
            _wait("the TEE container's socket", lambda: Path(socket).exists(), 30)
        with TeeClient(socket) as tee:
            info = tee.device_info()
        if info.device_id != self.s.device_id:
            raise StepFailed(f"TEE says device {info.device_id!r}, the stack {self.s.device_id!r}")
        self.s.tee_measurement, self.s.tee_svn = info.measurement, info.tee_svn
        return (f"{info.device_id} ({info.device_class}), TEE measurement {info.measurement[:16]}..., "
                f"TEE svn {info.tee_svn}")

    def keys(self) -> str:
        from edb_cloud.publisher import init_publisher

        record = init_publisher(self.s.config)
        if record.mode != "keyvault":
            raise StepFailed(f"publisher keys are {record.mode}, expected Key Vault")
        return f"KEK {record.kek}; signing key {record.signer_key.rsplit('/', 2)[-2]} with a publisher certificate"

    def train(self) -> str:
        from edb_cloud.train import Variant, train_digits

        models = self.s.config.cloud_dir / "models"
        models.mkdir(parents=True, exist_ok=True)
        details = []
        variants: tuple[Variant, ...] = ("v1", "v2")
        for variant in variants:
            model = train_digits(variant)
            if model.accuracy < 0.9:
                raise StepFailed(f"{variant} accuracy {model.accuracy:.3f} < 0.9")
            (models / f"digits-{variant}.onnx").write_bytes(model.onnx)
            details.append(f"{variant} {model.description.split(' + ')[-1]} accuracy {model.accuracy:.3f}")
        return "; ".join(details) + f" ({model.test_samples} held-out images)"

    def build(self) -> str:
        import datetime as dt

        from edb.cpk import open_package, verify_package
        from edb.pki.certs import load_pem_certificates_file
        from edb_cloud.packaging import build_package
        from edb_cloud.publisher import pki_dir

        roots = load_pem_certificates_file(pki_dir(self.s.config) / "root.pem")
        details = []
        for variant, version, svn in (("v1", V1, 1), ("v2", V2, 2)):
            model = self.s.config.cloud_dir / "models" / f"digits-{variant}.onnx"
            path = self.s.config.cloud_dir / "packages" / f"{NAME}-{version}.cpk"
            built = build_package(self.s.config, model, path, package_id=NAME, version=version,
                                  security_version=svn, devices=[self.s.device_id], device_classes=[])
            with open_package(path) as reader:
                verify_package(reader, trust_roots=roots, now=dt.datetime.now(dt.UTC), device_id=self.s.device_id)
            self.s.packages[version] = path
            details.append(f"{version} svn {svn} {built.file_size} B")
        policy = self.pinned_release_policy(NAME)
        return "; ".join(details) + f"; signatures verify; release policy {policy}"

    def publish(self) -> str:
        import requests

        from edb.cpk import open_package
        from edb.schemas.common import iso_utc
        from edb_cloud.blob import publish_blob
        from edb_cloud.releases import Release, ReleaseRegistry

        registry = ReleaseRegistry(self.s.config.cloud_dir / "releases.json")
        for version, path in self.s.packages.items():
            with open_package(path) as reader:
                svn = int(reader.info().security_version or 0)
            up = publish_blob(path, name=self.name, version=version,
                              connection_string=self.s.config.blob_connection_string,
                              container=self.s.config.blob_container,
                              connection_verify=self.s.config.connection_verify())
            fetched = requests.get(up.url, verify=str(self.s.config.ca_cert), timeout=30)
            if fetched.status_code != 200 or hashlib.sha256(fetched.content).hexdigest() != up.sha256:
                raise StepFailed(f"the SAS URL of {version} does not serve the uploaded bytes")
            release = Release(self.name, self.name, version, svn, up.url, up.sha256, up.size, up.blob, iso_utc())
            registry.add(release)
            self.s.releases[version] = release
        return f"{len(self.s.releases)} packages behind read-only HTTPS SAS URLs (fetched back, SHA-256 match)"

    def template(self) -> Path:
        from edb_cloud.deploy import default_template

        return default_template()

    def after_deploy(self) -> None:
        # Faster windows and frames for a short demo (ordinary module twin settings).
        self.s.hub.patch_module_desired(self.s.device_id, "telemetry_reporter", {"metricsIntervalSeconds": 2})
        self.s.hub.patch_module_desired(self.s.device_id, "simulated_sensor", {"intervalMs": 100})
        # the runner's counters every 5 s (its minimum) instead of its fleet default of 60 s: the demo
        # waits on them (every frame answered)
        self.s.hub.patch_module_desired(self.s.device_id, "inference_runner", {"stats": {"reportIntervalSeconds": 5}})

    def deploy(self) -> str:
        from edb_cloud.deploy import (
            deploy_to_device,
            deployed_version,
            render_manifest,
            wait_for_deployment,
            write_manifest,
        )

        platform = self.platform
        manifest = render_manifest(self.s.config, self.template(), "amd64" if self.platform_modules else platform)
        if self.platform_modules:  # only these modules' images of the platform (the arm64 smoke test)
            modules = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
            for name in self.platform_modules:
                settings = modules[name]["settings"]
                settings["image"] = settings["image"].rsplit("-", 1)[0] + f"-{platform}"
        path = write_manifest(self.s.config, manifest, platform)
        deploy_to_device(self.s.hub, self.s.device_id, manifest)
        # a refusal (CLOUD_DEPLOY_REFUSED, with the agent's code) ends the demo here, not after 60 s
        wait_for_deployment(self.s.hub, self.s.device_id, deployed_version(self.s.hub, self.s.device_id),
                            timeout_s=60 * _timeout_scale())

        def all_running() -> bool:
            reported = self._twin("$edgeAgent").reported
            modules = reported.get("modules") or {}
            return (reported.get("lastDesiredStatus") or {}).get("code") == 200 and all(
                (modules.get(m) or {}).get("runtimeStatus") == "running" for m in self.modules)

        _wait("every module running ($edgeAgent reported)", all_running, 60)
        self.after_deploy()
        return f"{path.name}: {', '.join(self.modules)} running (edge agent reports 200)"

    def _rollout(self, version: str) -> tuple[float, Any]:
        from edb_cloud.rollout import rollout_to_device, wait_for_install

        started = time.monotonic()
        release = self._release(version)
        rollout_to_device(self.s.hub, self.s.device_id, release)
        outcome = wait_for_install(self.s.hub, self.s.device_id, release, timeout_s=60 * _timeout_scale(), poll_s=0.25,
                                   require_serving=True)
        return time.monotonic() - started, outcome

    def rollout_v1(self) -> str:
        seconds, outcome = self._rollout(V1)
        if outcome.state != "installed" or outcome.serving != V1:
            raise StepFailed(f"v1 {outcome.state}, serving {outcome.serving}: {outcome.reported}")
        return (f"{NAME} {V1} installed (svn {outcome.reported.security_version}) and serving {seconds:.1f} s "
                "after the twin patch")

    def _metrics_for(self, model: str, after: int = 0) -> list[Upstream]:
        self._poll_upstream()
        return [e for e in metrics_with_results(self.s.events, model) if e.seq > after]

    def upstream_v1(self) -> str:
        found = _wait(f"a metrics window with answers from {NAME}@{V1}", lambda: self._metrics_for(f"{NAME}@{V1}"),
                      30)
        body = found[-1].payload
        inference = body["inference"]
        sample = body.get("lastResult") or {}
        return (f"metrics (application/json, utf-8, messageType=metrics): {inference['count']} answers "
                f"in {body['windowSeconds']:.1f} s, p50 {inference['latencyMs']['p50']} ms, accuracy "
                f"{inference['accuracy']}; sample {sample.get('requestId')} -> {sample.get('predictions')} "
                f"(expected {sample.get('expected')}) by {sample.get('model')}")

    def rollout_v2(self) -> str:
        self._poll_upstream()
        mark = self.s.since
        seconds, outcome = self._rollout(V2)
        if outcome.state != "installed" or outcome.serving != V2:
            raise StepFailed(f"v2 {outcome.state}, serving {outcome.serving}: {outcome.reported}")
        found = _wait(f"answers from {NAME}@{V2} upstream", lambda: self._metrics_for(f"{NAME}@{V2}", mark), 30)
        by_version = found[0].payload["inference"]["byVersion"]
        return f"serving {V2} {seconds:.1f} s after the twin patch; first window after the swap: {by_version}"

    def nothing_dropped(self) -> str:
        errors_before = (self._twin("inference_runner").reported.get("stats") or {}).get("errors")
        self.s.hub.patch_module_desired(self.s.device_id, "simulated_sensor", {"enabled": False})
        try:
            def settled() -> str | None:
                sensor = self._twin("simulated_sensor").reported
                if (sensor.get("sensor") or {}).get("enabled") is not False:
                    return None
                ok, detail = answered_everything(sensor, self._twin("inference_runner").reported)
                return detail if ok else None

            detail = _wait("every frame sent to be answered", settled, 20)
        finally:
            self.s.hub.patch_module_desired(self.s.device_id, "simulated_sensor", {"enabled": True})
        errors_after = (self._twin("inference_runner").reported.get("stats") or {}).get("errors")
        if errors_after != errors_before:
            raise StepFailed(f"error answers grew from {errors_before} to {errors_after} across the swap")
        return f"{detail}; error answers unchanged across the swap ({errors_after}: frames sent before v1 existed)"

    def tampered(self) -> str:
        from edb.cpk import open_package
        from edb_cloud.blob import publish_blob
        from edb_cloud.releases import Release

        source = self.s.packages[V2]
        tampered = source.with_name(f"{NAME}-{V2}-tampered.cpk")
        data = bytearray(source.read_bytes())
        with open_package(source) as reader:
            payload = reader.span(0)
        data[payload.start + payload.size // 2] ^= 0x01  # one bit of ciphertext, as an attacker on the way would
        tampered.write_bytes(data)
        # The attacker controls storage AND the twin pointer (the worst case): the hash matches the
        # tampered bytes, so only the TEE's checks stand between it and the device.
        up = publish_blob(tampered, name=NAME, version=f"{V2}-tampered",
                          connection_string=self.s.config.blob_connection_string,
                          container=self.s.config.blob_container, connection_verify=self.s.config.connection_verify())
        release = Release(NAME, NAME, V2, 2, up.url, up.sha256, up.size, up.blob, "")
        reported, code, mark = self._refused(release, "tampered package", TAMPER_CODES)
        if reported.installed_version != V2 or self._serving() != V2:
            raise StepFailed("the serving version was disturbed")
        self._alert_since("tamper", TAMPER_CODES, mark)
        return f"refused with {code} ({reported.error.message}); alert tamper upstream; v2 installed and serving"

    def _refused(self, release: Any, what: str, codes: frozenset[str]) -> tuple[Any, str, int]:
        """Roll ``release`` out to the device, which must refuse it with one of ``codes``: the reported
        package, the code, and the upstream position from before the rollout."""
        from edb_cloud.rollout import rollout_to_device, wait_for_install

        self._poll_upstream()
        mark = self.s.since
        rollout_to_device(self.s.hub, self.s.device_id, release)
        outcome = wait_for_install(self.s.hub, self.s.device_id, release, timeout_s=60, poll_s=0.25)
        reported = outcome.reported
        code = reported.error.code if reported and reported.error else None
        if outcome.state != "failed" or reported is None or reported.error is None or code not in codes:
            raise StepFailed(f"{what}: {outcome.state} {code}")
        return reported, code, mark

    def _alert_since(self, kind: str, codes: frozenset[str], mark: int) -> None:
        _wait(f"a {kind} alert upstream", lambda: [a for a in alerts(self._poll_upstream(), kind, codes)
                                                   if a.seq > mark], 20)

    def rollback(self) -> str:
        reported, code, mark = self._refused(self._release(V1), "rollback", ROLLBACK_CODES)
        self._alert_since("rollback", ROLLBACK_CODES, mark)
        _wait(f"answers from {NAME}@{V2} after the refusals", lambda: self._metrics_for(f"{NAME}@{V2}", mark), 20)
        if self._serving() != V2:
            raise StepFailed("v2 is no longer serving")
        return (f"refused with {code} ({reported.error.message}); alert rollback upstream; "
                f"v2 still installed and answering")

    def stack_down(self) -> str:
        _, doc = _edb_local("down", self.state_dir, timeout=120)
        running = [c["name"] for c in doc.get("components", []) if c.get("state") not in ("stopped", "not installed")]
        leftovers = [p.name for p in (self.state_dir / "run").glob("*.pid")] if (self.state_dir / "run").exists() \
            else []
        if self.runtime == "docker":
            from edb_local.supervisor.docker_device import stack_containers

            leftovers += stack_containers(self.state_dir)
        if running or leftovers:
            raise StepFailed(f"still running: {running}, pid files or containers: {leftovers}")
        return "every component and module stopped; state kept in " + str(self.state_dir)

    # -- output ------------------------------------------------------------------------------------
    def print_status(self) -> None:
        from rich.console import Console

        from edb_cloud.status import fleet_status, render_table

        try:
            rows = fleet_status(self.s.hub, [self.s.device_id])
        except Exception as exc:
            self.echo(f"(status unavailable: {type(exc).__name__})")
            return
        Console(width=160).print(render_table(rows))

    def summary(self) -> Any:
        from rich.table import Table

        table = Table(title="edb demo: summary")
        for column in ("#", "step", "result", "seconds", "detail"):
            table.add_column(column, overflow="fold")
        for i, r in enumerate(self.results, 1):
            table.add_row(str(i), r.name, "[green]PASS[/green]" if r.ok else "[red]FAIL[/red]",
                          f"{r.seconds:.1f}", r.detail)
        return table


@click.command(name="demo")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".edb/demo"),
              show_default=True, help="Fresh state directory for the demo's own stack (wiped first).")
@click.option("--keep-running", is_flag=True, help="Leave the stack running at the end (to explore it).")
@click.option("--runtime", type=click.Choice(["process", "docker"]), default="process", show_default=True,
              help="docker: every module and the TEE in containers of the images `edb images build` made "
                   "(make demo-containers)")
def demo(state_dir: Path, keep_running: bool, runtime: str) -> None:
    """Run the whole blueprint end to end on the local stack; exit 0 only if every step is verified."""
    run_and_exit(lambda echo: Demo(state_dir, keep_running=keep_running, echo=echo, runtime=runtime))


def run_and_exit(make: Callable[[Callable[[str], None]], Demo]) -> None:
    """Run a demo printing to a wide console, print its summary and verdict, exit 0 only if every
    step was verified (`edb demo`, `edb demo-vision`)."""
    from rich.console import Console

    console = Console(width=max(Console().width, 120))
    started = time.monotonic()
    runner = make(console.print)
    ok = runner.run()
    console.print(runner.summary())
    total = time.monotonic() - started
    passed = sum(r.ok for r in runner.results)
    verdict = "[green]every step verified[/green]" if ok else "[red]FAILED[/red]"
    console.print(f"{verdict}: {passed}/{len(runner.results)} steps in {total:.0f} s")
    sys.exit(0 if ok else 1)
