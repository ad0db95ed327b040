"""What atomr knows of a runtime without importing its engine: its `RuntimeSpec`.

A spec names the runtime, the class that runs it (imported only when a replica starts), the
package it needs and the extra that installs it, how to recognise a model reference or folder as
its own, what a local model folder must hold, and a pydantic model of its `engine:` options.
Every spec is registered in `atomr.runners.catalog`; nothing else in atomr names a runtime.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from atomr.runners.common.model_files import hf_folder
from pydantic import BaseModel, ConfigDict, ValidationError

from atomr.core.errors import ConfigError
from atomr.core.runner import ModelRunner

Options = TypeVar("Options", bound="EngineOptions")


class EngineOptions(BaseModel):
    """A runtime's `engine:` options; an unknown key is an error naming it."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class OpenEngineOptions(EngineOptions):
    """Options passed on to an engine or SDK that checks them itself (vLLM's engine arguments)."""

    model_config = ConfigDict(frozen=True, extra="allow")


def hf_checkpoint_problem(path: Path) -> str | None:
    """Why `path` is not a Hugging Face checkpoint or engine folder (None when it is one)."""
    if hf_folder(path) is not None:
        return None
    return f"{path} holds no config.json (not a Hugging Face checkpoint or engine folder)"


@dataclass(frozen=True)
class RuntimeSpec:
    """One runtime, described without importing its engine."""

    name: str  # what `runtime:` says
    runner: str  # "module:Class" of its ModelRunner, imported when a replica starts
    local: bool  # runs an engine on this machine (False: calls a remote API)
    package: str  # the import that tells whether it is installed (probed, never imported)
    extra: str  # the atomr extra that installs that package
    prefixes: tuple[str, ...] = ()  # model references "<prefix>/<model>" that mean this runtime
    builtin: bool = False  # serves the built-in models ("builtin:NAME") when no runtime is named
    recognise: Callable[[Path], bool] | None = None  # whether a model folder is this runtime's format
    model_files: Callable[[Path], str | None] = hf_checkpoint_problem  # a local folder's problem, if any
    options: type[EngineOptions] = OpenEngineOptions
    hint: str = ""  # how to install it, when `pip install 'atomr[extra]'` is not enough

    def runner_class(self) -> type[ModelRunner]:
        """Import and return the runner class (this imports the engine)."""
        module_name, _, class_name = self.runner.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        assert isinstance(cls, type) and issubclass(cls, ModelRunner)
        return cls

    def installed(self) -> bool:
        """Whether the package this runtime needs is installed (found without importing it)."""
        try:
            return importlib.util.find_spec(self.package) is not None
        except (ImportError, ValueError):  # a parent package missing (google.genai without google)
            return False

    def install_hint(self) -> str:
        """How to install what this runtime needs, for error messages."""
        how = self.hint or f"pip install 'atomr[{self.extra}]'"
        return f"the {self.name} runtime needs the {self.package} package: {how}"


def parse_engine_options(runtime: str, engine: Mapping[str, Any], options: type[Options]) -> Options:
    """Validate a deployment's `engine:` mapping; the first problem becomes a ConfigError naming
    `engine.<option>` (an unknown option lists the known ones)."""
    try:
        return options.model_validate(dict(engine))
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(part) for part in err["loc"]) or "engine"
        field = f"engine.{name}"
        if err["type"] == "extra_forbidden":
            known = ", ".join(sorted(options.model_fields))
            message = f"{field} is not an engine option of the {runtime} runtime; known: {known}"
        else:
            message = f"{field}: {err['msg']}, got {err.get('input')!r}"
        raise ConfigError(message, field=field) from None
