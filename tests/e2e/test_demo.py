"""`edb demo` as a test: the whole flow of the issue, every step verified, on its own stack."""

from __future__ import annotations

from pathlib import Path

from edb_cloud.demo import Demo


def test_demo_flow_passes_every_step(stack_dir: Path) -> None:
    lines: list[str] = []
    demo = Demo(stack_dir / "demo", keep_running=False, echo=lines.append)
    ok = demo.run()
    failed = [(r.name, r.detail) for r in demo.results if not r.ok]
    assert ok and not failed, failed
    names = [r.name for r in demo.results]
    assert names[-1] == "stop the stack" and len(names) == 15
