"""Expand ``deployment.template.json`` the way iotedgedev does (pure, apart from reading files).

- ``${VAR}`` must be defined (an undefined one is an error: a deployment with a literal
  ``${EDB_KEY_RELEASE_URL}`` in it would fail on the device, late and quietly);
  bare ``$VAR`` is replaced only when defined, so IoT Edge's own ``$edgeAgent``, ``$edgeHub`` and
  ``$upstream`` pass through untouched (iotedgedev's ``expandvars`` behaves the same).
- ``${MODULES.<folder>}`` and ``${MODULES.<folder>.<platform>}`` become the module's image from
  ``modules/<folder>/module.json``: ``<repository>:<version>-<platform>``.
- ``settings.createOptions`` written as an object is stringified (compact JSON) and split into
  ``createOptions``, ``createOptions01`` .. ``createOptions07`` of at most 512 characters each.
- ``$schema-template`` is dropped. Only string *values* are expanded, never keys, so a value can
  never break the JSON structure.
Variables come from env files (``KEY=VALUE``, ``#`` comments, shell quoting and ``export``),
later files overriding earlier ones, then the process environment overriding all (iotedgedev
loads ``.env`` without overriding what the shell already set).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edb.errors import ConfigError

CREATE_OPTIONS_CHUNK = 512
CREATE_OPTIONS_MAX_PARTS = 8
DEFAULT_PLATFORM = "amd64"
_VAR = re.compile(r"\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_REF = re.compile(r"^MODULES\.([A-Za-z0-9_\-]+)(?:\.([A-Za-z0-9_\-]+))?$")


class TemplateError(ConfigError):
    code = "CONFIG_TEMPLATE_INVALID"


def parse_env_text(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise TemplateError(f"env line {number} is not NAME=value", code="CONFIG_ENV_FILE_INVALID")
        try:
            parts = shlex.split(value, comments=False, posix=True)  # the shell's quoting (shlex.quote)
        except ValueError:
            raise TemplateError(f"env line {number} has unbalanced quotes", code="CONFIG_ENV_FILE_INVALID") from None
        values[name] = " ".join(parts)
    return values


def load_env(files: Iterable[Path], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Env files in order (missing ones skipped), then ``environ`` (default: the process environment)."""
    values: dict[str, str] = {}
    for path in files:
        if path.is_file():
            values.update(parse_env_text(path.read_text(encoding="utf-8")))
    values.update(os.environ if environ is None else environ)
    return values


def module_image(modules_dir: Path, folder: str, platform: str, env: Mapping[str, str]) -> str:
    path = modules_dir / folder / "module.json"
    if not path.is_file():
        raise TemplateError(f"${{MODULES.{folder}}}: {path} does not exist", code="CONFIG_MODULE_UNKNOWN")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        image = doc["image"]
        repository = expand_string(str(image["repository"]), env, modules_dir=None, platform=platform)
        version = str(image["tag"]["version"])
        platforms = image["tag"]["platforms"]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise TemplateError(f"{path} is not a valid module.json ({type(exc).__name__})") from None
    if platform not in platforms:
        raise TemplateError(f"module {folder} has no Dockerfile for platform {platform!r}",
                            code="CONFIG_PLATFORM_UNSUPPORTED")
    return f"{repository}:{version}-{platform}"


def expand_string(value: str, env: Mapping[str, str], *, modules_dir: Path | None, platform: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        braced, bare = match.group(1), match.group(2)
        if bare is not None:
            return env.get(bare, match.group(0))
        module_ref = _MODULE_REF.match(braced)
        if module_ref:
            if modules_dir is None:
                raise TemplateError("a module image placeholder cannot appear inside module.json")
            return module_image(modules_dir, module_ref.group(1), module_ref.group(2) or platform, env)
        if not _NAME.match(braced):
            raise TemplateError(f"invalid placeholder ${{{braced[:40]}}}")
        if braced not in env:
            raise TemplateError(f"variable {braced} is not defined (set it in the environment or an env file)",
                                code="CONFIG_UNDEFINED_VARIABLE")
        return env[braced]

    return _VAR.sub(substitute, value)


def expand_values(node: Any, env: Mapping[str, str], *, modules_dir: Path, platform: str) -> Any:
    if isinstance(node, str):
        return expand_string(node, env, modules_dir=modules_dir, platform=platform)
    if isinstance(node, list):
        return [expand_values(item, env, modules_dir=modules_dir, platform=platform) for item in node]
    if isinstance(node, dict):
        return {key: expand_values(item, env, modules_dir=modules_dir, platform=platform)
                for key, item in node.items()}
    return node


def split_create_options(options: Any) -> dict[str, str]:
    """``{"createOptions": <first 512>, "createOptions01": <next 512>, ...}``."""
    text = options if isinstance(options, str) else json.dumps(options, separators=(",", ":"))
    chunks = [text[i:i + CREATE_OPTIONS_CHUNK] for i in range(0, len(text), CREATE_OPTIONS_CHUNK)] or [""]
    if len(chunks) > CREATE_OPTIONS_MAX_PARTS:
        limit = CREATE_OPTIONS_CHUNK * CREATE_OPTIONS_MAX_PARTS
        raise TemplateError(f"createOptions is {len(text)} characters; at most {limit} fit",
                            code="CONFIG_CREATE_OPTIONS_TOO_LONG")
    return {("createOptions" if i == 0 else f"createOptions{i:02d}"): chunk for i, chunk in enumerate(chunks)}


def join_create_options(settings: Mapping[str, Any]) -> str:
    """The inverse of :func:`split_create_options` (what edgeAgent does on the device)."""
    parts = ["createOptions", *(f"createOptions{i:02d}" for i in range(1, CREATE_OPTIONS_MAX_PARTS))]
    return "".join(str(settings[p]) for p in parts if p in settings)


def _stringify_create_options(agent_desired: dict[str, Any]) -> None:
    for section in ("systemModules", "modules"):
        modules = agent_desired.get(section) or {}
        for module in modules.values():
            settings = module.get("settings") if isinstance(module, dict) else None
            if not isinstance(settings, dict) or "createOptions" not in settings:
                continue
            options = settings.pop("createOptions")
            for stale in [k for k in settings if k.startswith("createOptions")]:
                settings.pop(stale)
            settings.update(split_create_options(options))


def expand_template(template: Mapping[str, Any], env: Mapping[str, str], *, modules_dir: Path,
                    platform: str = DEFAULT_PLATFORM) -> dict[str, Any]:
    """The deployment manifest for ``platform``: what ``iotedgedev genconfig`` writes to config/."""
    document = {k: v for k, v in template.items() if k != "$schema-template"}
    expanded: dict[str, Any] = expand_values(document, env, modules_dir=modules_dir, platform=platform)
    content = expanded.get("modulesContent")
    if not isinstance(content, dict):
        raise TemplateError("the template has no modulesContent object")
    agent = content.get("$edgeAgent", {}).get("properties.desired")
    if not isinstance(agent, dict):
        raise TemplateError("the template has no $edgeAgent properties.desired")
    _stringify_create_options(agent)
    return expanded


def expand_template_file(path: Path, env: Mapping[str, str], *, modules_dir: Path,
                         platform: str = DEFAULT_PLATFORM) -> dict[str, Any]:
    try:
        template = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TemplateError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    return expand_template(template, env, modules_dir=modules_dir, platform=platform)
