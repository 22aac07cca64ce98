"""A deployment's modules, resolved to what the agent runs (pure).

Resolution is all-or-nothing, like edgeAgent applying a deployment: one module with an unknown image
or invalid createOptions rejects the whole deployment, and the previous one keeps running.
"""

from __future__ import annotations

from dataclasses import dataclass

from edb_local.agent.create_options import ProcessOptions, parse_create_options
from edb_local.agent.deployment import Deployment, ModuleSpec
from edb_local.agent.module_map import EntryPoint, ModuleMap


@dataclass(frozen=True)
class ResolvedModule:
    spec: ModuleSpec
    entry: EntryPoint
    options: ProcessOptions

    @property
    def module_id(self) -> str:
        return self.spec.module_id

    @property
    def host_provided(self) -> bool:
        return self.entry.host_provided


def resolve_deployment(deployment: Deployment, module_map: ModuleMap, *,
                       containers: bool = False) -> dict[str, ResolvedModule]:
    """``containers``: the Docker runtime runs every module's image itself (no entry point, nothing
    host-provided); createOptions are still checked here so a bad one rejects the deployment alike."""
    return {
        module_id: ResolvedModule(
            spec=spec,
            entry=EntryPoint("container", spec.image) if containers else module_map.resolve(spec.image),
            options=parse_create_options(module_id, spec.create_options),
        )
        for module_id, spec in deployment.modules.items()
    }
