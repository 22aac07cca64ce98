"""`edb demo-vision` (`make demo-vision`) as a test: a real pretrained vision model from a PyPI wheel,
packaged, rolled out and served to the camera module over the Open Inference Protocol, every step
verified, on its own stack."""

from __future__ import annotations

from pathlib import Path

from edb_cloud.demo_vision import VisionDemo


def test_demo_vision_flow_passes_every_step(stack_dir: Path) -> None:
    lines: list[str] = []
    demo = VisionDemo(stack_dir / "demo-vision", keep_running=False, echo=lines.append)
    ok = demo.run()
    failed = [(r.name, r.detail) for r in demo.results if not r.ok]
    assert ok and not failed, failed
    names = [r.name for r in demo.results]
    assert names[-1] == "stop the stack" and len(names) == 14
