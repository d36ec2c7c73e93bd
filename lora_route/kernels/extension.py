"""The compiled extension ``lora_route._C`` (``csrc/``), imported once for the backends that call it."""
from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Callable


@functools.lru_cache(maxsize=1)
def load_extension() -> tuple[ModuleType | None, str | None]:
    """``(module, None)`` when ``lora_route._C`` imports, else ``(None, why)``."""
    try:
        module = importlib.import_module("lora_route._C")  # a compiled binary, present only where it was built
    except ImportError as error:
        return None, f"lora_route._C is not built or does not load ({error})"
    return module, None


def extension_entry(name: str, missing: str) -> tuple[Callable | None, str | None]:
    """``(function, None)`` when ``lora_route._C`` imports and holds the entry point ``name``, else ``(None, why)``:
    the import error, or ``missing`` for a build without that entry point."""
    module, why = load_extension()
    if module is None:
        return None, why
    entry = getattr(module, name, None)
    return (entry, None) if entry is not None else (None, missing)
