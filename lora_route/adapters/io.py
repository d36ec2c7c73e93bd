"""Adapters on disk and one direction as a standard PEFT LoRA.

A lora_route checkpoint is a folder with ``adapter_model.safetensors`` (every bank, keyed
``<module name>.<lora_A|lora_B|uni_A|uni_B|router.weight>``) and ``adapter_config.json`` (``format: lora_route``,
the :class:`~lora_route.adapters.config.RoutedLoRAConfig`, the base model's identity, every tensor's shape and the weights'
sha256). Files are written to a temporary name and renamed (atomic); loading never unpickles (safetensors + JSON)
and refuses another base model, other shapes or a weights file that is not the one the config was written with.

``export_peft(model, path, src, tgt)`` writes the direction ``src → tgt`` as a plain PEFT LoRA folder that
``peft.PeftModel.from_pretrained`` (and vLLM) load: per module ``A' = A[a]`` and ``B' = B[b]·U`` (the UniCore folded
into B), ``lora_alpha / r`` = lora_route's ``alpha / r``. MLAS's two routes are stacked into one LoRA of rank 2r
(``rank_pattern`` / ``alpha_pattern`` for the layers with a pair-specific LoRA).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.patch import (
    apply_routed_lora,
    direction_routes,
    find_targets,
    patched_config,
    routed_modules,
    unwrap,
)
from lora_route.common.files import atomic_path, read_json, write_json
from lora_route.common.languages import direction_key

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT = "lora_route"
FORMAT_VERSION = 1
_IDENTITY_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")


# ------------------------------------------------------------------------------------------------- file helpers
def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Run ``write(temp_path)`` on a temporary file next to ``path``, then rename it onto ``path``."""
    with atomic_path(path) as temporary:
        write(str(temporary))


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    cpu = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
    _atomic_write(path, lambda temp: save_file(cpu, temp, metadata={"format": "pt"}))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None


# ------------------------------------------------------------------------------------------------- identity
def _module_shapes(model: nn.Module, names: list[str]) -> list[list[Any]]:
    shapes = []
    for name in names:
        module = model.get_submodule(name)
        linear = getattr(module, "base_layer", module)
        shapes.append([name, list(linear.weight.shape)])
    return shapes


def base_model_identity(model: nn.Module, module_names: list[str]) -> dict[str, Any]:
    """What a checkpoint must agree with: the HF config's architecture fields and a sha256 of the names and
    (d_out, d_in) shapes of the patched linear layers."""
    hf_config = getattr(model, "config", None)
    identity = {field: getattr(hf_config, field, None) for field in _IDENTITY_FIELDS}
    text = json.dumps(_module_shapes(model, module_names), separators=(",", ":"))
    identity["patched_modules_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    return identity


def _check_identity(saved: dict[str, Any], actual: dict[str, Any], path: Path) -> None:
    differing = [f"{key}: checkpoint {saved.get(key)!r}, model {actual.get(key)!r}"
                 for key in actual if saved.get(key) != actual.get(key)]
    if differing:
        raise ValueError(f"the adapters in {path} were trained on another base model ({'; '.join(differing)})")


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter tensor (banks, UniCore, router), keyed ``<module name>.<parameter name>``."""
    state = {}
    for name, module in routed_modules(model).items():
        for param_name, param in module.named_parameters():
            if not param_name.startswith("base_layer."):
                state[f"{name}.{param_name}"] = param
    return state


# ------------------------------------------------------------------------------------------------- save / load
def save_adapters(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's adapters into folder ``path`` (created if needed); returns the folder."""
    config = patched_config(model)
    model = unwrap(model)
    folder = Path(path)
    tensors = adapter_state_dict(model)
    weights = folder / WEIGHTS_NAME
    _write_safetensors(weights, tensors)
    write_json(folder / CONFIG_NAME, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(),
        "base_model": base_model_identity(model, list(routed_modules(model))),
        "tensors": {key: list(value.shape) for key, value in tensors.items()},
        "weights_sha256": _sha256(weights),
    })
    return folder


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of a lora_route checkpoint folder (format checked)."""
    data = read_json(Path(path) / CONFIG_NAME)
    if data.get("format") != FORMAT:
        hint = " (a PEFT adapter: load it with peft.PeftModel.from_pretrained)" if "peft_type" in data else ""
        raise ValueError(f"{Path(path) / CONFIG_NAME} is not a lora_route adapter config{hint}")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {data.get('format_version')!r} is not supported "
                         f"(this lora_route reads {FORMAT_VERSION})")
    for key in ("config", "base_model", "tensors", "weights_sha256"):
        if key not in data:
            raise ValueError(f"{Path(path) / CONFIG_NAME} lacks the field {key!r}")
    return data


def load_adapters(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a :func:`save_adapters` folder into ``model`` (patching it first when it is not patched yet).

    Raises ValueError when the base model, the config of an already patched model, the tensor names or shapes
    differ from the checkpoint, or the weights file is not the one the config was written with.
    """
    folder = Path(path)
    data = read_adapter_config(folder)
    config = RoutedLoRAConfig.from_dict(data["config"])
    wrapper, model = model, unwrap(model)
    current = getattr(model, "routed_lora_config", None)
    if current is None:
        names = [name for name, _ in find_targets(model, config)]
        _check_identity(data["base_model"], base_model_identity(model, names), folder)
    else:
        ours, theirs = current.to_dict(), config.to_dict()
        differing = sorted(key for key in set(ours) | set(theirs) if ours.get(key) != theirs.get(key))
        if differing:
            raise ValueError(f"the model is patched with another adapter config than {folder} "
                             f"(differs in {', '.join(differing)})")
        _check_identity(data["base_model"], base_model_identity(model, list(routed_modules(model))), folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist")
    if _sha256(weights) != data["weights_sha256"]:
        raise ValueError(f"{weights} does not match its config (sha256 differs): the checkpoint is corrupt or mixed")
    tensors = _read_safetensors(weights)
    if current is None:
        apply_routed_lora(model, config)
    _copy_into(adapter_state_dict(model), tensors, folder)
    return wrapper


def _copy_into(params: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], folder: Path) -> None:
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS_NAME} does not fit the model: missing {missing[:5] or 'none'}, "
                         f"unexpected {unexpected[:5] or 'none'}")
    for key, param in params.items():
        if tuple(tensors[key].shape) != tuple(param.shape):
            raise ValueError(f"{key}: checkpoint shape {tuple(tensors[key].shape)} but the model has "
                             f"{tuple(param.shape)}")
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(tensors[key].to(param.dtype))


# ------------------------------------------------------------------------------------------------- PEFT export
def export_peft(model: nn.Module, path: str | os.PathLike, src: str, tgt: str) -> Path:
    """Write direction ``src → tgt`` as a standard PEFT LoRA folder; returns the folder."""
    config = patched_config(model)
    model = unwrap(model)
    routes = direction_routes(model, src, tgt)
    modules = routed_modules(model)
    tensors, ranks = {}, {}
    for name, module in modules.items():
        a, b = module.direction_factors(module.routes_of(routes))
        tensors[f"base_model.model.{name}.lora_A.weight"] = a
        tensors[f"base_model.model.{name}.lora_B.weight"] = b
        ranks[name] = a.shape[0]
    scaling = config.alpha / config.r
    rank = Counter(ranks.values()).most_common(1)[0][0]
    other = {name: value for name, value in ranks.items() if value != rank}
    all_patched = not isinstance(config.target_modules, str) and config.layers is None
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": scaling * rank,
        "target_modules": list(config.target_modules) if all_patched else list(modules),
        "rank_pattern": {re.escape(name): value for name, value in other.items()},
        "alpha_pattern": {re.escape(name): scaling * value for name, value in other.items()},
        "lora_dropout": config.dropout, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "init_lora_weights": True, "modules_to_save": None, "inference_mode": True,
        "base_model_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None) or None,
        "revision": None,
    }
    folder = Path(path)
    _write_safetensors(folder / WEIGHTS_NAME, tensors)
    write_json(folder / CONFIG_NAME, peft_config)
    return folder


def export_all(model: nn.Module, path: str | os.PathLike) -> dict[str, Path]:
    """Every direction the adapter serves as a PEFT LoRA in ``path/<src>-<tgt>`` (for multi-LoRA serving, e.g.
    vLLM); also writes ``path/directions.json``. Returns direction key → folder."""
    config = patched_config(model)
    folder = Path(path)
    exported = {direction_key(s, t): export_peft(model, folder / direction_key(s, t), s, t)
                for s, t in config.supported_directions()}
    write_json(folder / "directions.json", {"method": config.method, "directions": list(exported)})
    return exported
