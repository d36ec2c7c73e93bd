"""Adapters on disk and one direction as a standard PEFT LoRA.

A lora_route checkpoint is a folder with ``adapter_model.safetensors`` (every bank, keyed
``<module name>.<lora_A|lora_B|uni_A|uni_B|router.weight>``) and ``adapter_config.json`` (``format: lora_route``, the
:class:`~lora_route.adapters.config.RoutedLoRAConfig`, the base model's identity, every tensor's shape, the weights'
sha256 and a sha256 of the config itself). A folder is built beside its target and swapped in as a whole
(:func:`lora_route.common.files.atomic_folder`), so a crash leaves the old or the new checkpoint, never a mix.
Loading never unpickles (safetensors + JSON), checks everything before it changes the model (a failed load leaves
the model as it was), and refuses another base model, other shapes, an edited config, a weights file that is not the
one the config was written with, and non-finite weights — each with an :class:`AdapterFileError` naming the file.

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
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.layer import RoutedLoRALinear
from lora_route.adapters.patch import (
    apply_routed_lora,
    direction_routes,
    find_targets,
    merged_direction,
    patched_config,
    routed_modules,
    unwrap,
)
from lora_route.common.files import atomic_folder, read_json, recover_folder, write_json
from lora_route.common.languages import direction_key

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
DIRECTIONS_NAME = "directions.json"
FORMAT = "lora_route"
FORMAT_VERSION = 2
_IDENTITY_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
_CONFIG_FIELDS = {"config": dict, "base_model": dict, "tensors": dict, "weights_sha256": str, "config_sha256": str}


class AdapterFileError(ValueError):
    """An adapter folder is missing, corrupt, edited, or does not fit the model (the message names the file)."""


# ------------------------------------------------------------------------------------------------- file helpers
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical_sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    cpu = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
    save_file(cpu, str(path), metadata={"format": "pt"})


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterFileError(f"{path} is not a readable safetensors file: {err}") from None


def _check_replaceable(path: Path, marker: str) -> None:
    """Refuse to replace ``path`` unless it is missing, an empty folder, or a folder this module wrote (``marker``)."""
    if path.exists() and not path.is_dir():
        raise AdapterFileError(f"{path} is a file; pass a folder to write the adapters into")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise AdapterFileError(f"{path} holds files that are not an adapter folder's; refusing to replace it "
                               "(pass a new or empty folder)")


def _adapter_folder(path: str | os.PathLike) -> Path:
    """``path`` after recovering an interrupted replacement; AdapterFileError unless it is an existing folder."""
    folder = recover_folder(path)
    if not folder.exists():
        raise FileNotFoundError(f"adapter folder {folder} does not exist")
    if not folder.is_dir():
        raise AdapterFileError(f"{folder} is a file; pass the adapter folder (with {CONFIG_NAME} and {WEIGHTS_NAME})")
    return folder


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
        raise AdapterFileError(f"the adapters in {path} were trained on another base model ({'; '.join(differing)})")


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter tensor (banks, UniCore, router), keyed ``<module name>.<parameter name>``."""
    state = {}
    for name, module in routed_modules(model).items():
        for param_name, param in module.named_parameters():
            if not param_name.startswith("base_layer."):
                state[f"{name}.{param_name}"] = param
    return state


def _expected_shapes(model: nn.Module, config: RoutedLoRAConfig) -> dict[str, tuple[int, ...]]:
    """``adapter_state_dict`` shapes that patching the unpatched ``model`` with ``config`` would give."""
    shapes = {}
    for name, layer_index in find_targets(model, config):
        d_out, d_in = model.get_submodule(name).weight.shape
        for param_name, shape in RoutedLoRALinear.parameter_shapes(config, layer_index, d_in, d_out).items():
            shapes[f"{name}.{param_name}"] = shape
    return shapes


# ------------------------------------------------------------------------------------------------- save / load
def save_adapters(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's adapters into folder ``path``, replacing a previous adapter folder there as a whole;
    returns the folder. Refuses adapters with non-finite values and a ``path`` that holds other files."""
    config = patched_config(model)
    model = unwrap(model)
    folder = recover_folder(path)
    _check_replaceable(folder, CONFIG_NAME)
    tensors = adapter_state_dict(model)
    bad = [key for key, value in tensors.items() if not bool(torch.isfinite(value).all())]
    if bad:
        raise ValueError(f"refusing to save adapters with non-finite values (in {', '.join(bad[:3])}"
                         f"{' and more' if len(bad) > 3 else ''})")
    described = {"config": config.to_dict(), "base_model": base_model_identity(model, list(routed_modules(model))),
                 "tensors": {key: list(value.shape) for key, value in tensors.items()}}
    with atomic_folder(folder) as built:
        _write_safetensors(built / WEIGHTS_NAME, tensors)
        write_json(built / CONFIG_NAME, {"format": FORMAT, "format_version": FORMAT_VERSION, **described,
                                         "weights_sha256": _sha256(built / WEIGHTS_NAME),
                                         "config_sha256": _canonical_sha256(described)})
    return folder


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed, checked ``adapter_config.json`` of a lora_route adapter folder."""
    file = _adapter_folder(path) / CONFIG_NAME
    try:
        data = read_json(file)
    except ValueError as err:
        raise AdapterFileError(str(err)) from None
    if data.get("format") != FORMAT:
        hint = " (a PEFT adapter: load it with peft.PeftModel.from_pretrained)" if "peft_type" in data else ""
        raise AdapterFileError(f"{file} is not a lora_route adapter config{hint}")
    if data.get("format_version") != FORMAT_VERSION:
        raise AdapterFileError(f"{file}: format_version {data.get('format_version')!r} is not supported "
                               f"(this lora_route reads {FORMAT_VERSION}; save the adapters again)")
    for key, kind in _CONFIG_FIELDS.items():
        if not isinstance(data.get(key), kind):
            raise AdapterFileError(f"{file}: the field {key!r} must be a JSON {'object' if kind is dict else 'string'}, "
                                   f"got {type(data.get(key)).__name__}")
    described = {key: data[key] for key in ("config", "base_model", "tensors")}
    if _canonical_sha256(described) != data["config_sha256"]:
        raise AdapterFileError(f"{file} was edited after it was saved (its config_sha256 does not match): the "
                               "weights were trained with other settings; save the adapters again instead")
    return data


def load_adapters(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a :func:`save_adapters` folder into ``model`` (patching it first when it is not patched yet).

    Everything is checked before the model changes, so a failed load leaves it as it was. Raises
    :class:`AdapterFileError` when the base model, the config of an already patched model, the tensor names or
    shapes differ from the checkpoint, the files are corrupt or edited, or the weights are not finite; ValueError when
    a direction is merged into the model's weights (unmerge it first).
    """
    data = read_adapter_config(path)
    folder = Path(path)
    wrapper, model = model, unwrap(model)
    try:
        config = RoutedLoRAConfig.from_dict(data["config"])
    except (TypeError, ValueError) as err:
        raise AdapterFileError(f"{folder / CONFIG_NAME}: invalid adapter config: {err}") from None
    current = getattr(model, "routed_lora_config", None)
    if current is None:
        expected = _expected_shapes(model, config)
        names = [name for name, _ in find_targets(model, config)]
        _check_identity(data["base_model"], base_model_identity(model, names), folder)
    else:
        if merged_direction(model) is not None:
            raise ValueError(f"{direction_key(*merged_direction(model))} is merged into the model's weights; "
                             "unmerge_direction(model) before loading other adapters")
        ours, theirs = current.to_dict(), config.to_dict()
        differing = sorted(key for key in set(ours) | set(theirs) if ours.get(key) != theirs.get(key))
        if differing:
            raise AdapterFileError(f"the model is patched with another adapter config than {folder} "
                                   f"(differs in {', '.join(differing)})")
        expected = {key: tuple(param.shape) for key, param in adapter_state_dict(model).items()}
        _check_identity(data["base_model"], base_model_identity(model, list(routed_modules(model))), folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise AdapterFileError(f"{weights} does not exist")
    if _sha256(weights) != data["weights_sha256"]:
        raise AdapterFileError(f"{weights} does not match its config (sha256 differs): the checkpoint is corrupt or "
                               "mixed")
    tensors = _read_safetensors(weights)
    _check_tensors(tensors, expected, weights)
    if current is None:
        apply_routed_lora(model, config)
    with torch.no_grad():
        for key, param in adapter_state_dict(model).items():
            param.copy_(tensors[key].to(param.dtype))
    return wrapper


def _check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], file: Path) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterFileError(f"{file} does not fit the model: missing {missing[:5] or 'none'}, "
                               f"unexpected {unexpected[:5] or 'none'}")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != tuple(shape):
            raise AdapterFileError(f"{file}: {key} has shape {tuple(tensors[key].shape)} but the model needs "
                                   f"{tuple(shape)}")
        if not tensors[key].is_floating_point() or not bool(torch.isfinite(tensors[key]).all()):
            raise AdapterFileError(f"{file}: {key} holds non-finite or non-float values")


# ------------------------------------------------------------------------------------------------- PEFT export
def _write_peft_direction(model: nn.Module, folder: Path, src: str, tgt: str) -> None:
    """The PEFT LoRA files of direction ``src → tgt`` into the existing ``folder``."""
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
    _write_safetensors(folder / WEIGHTS_NAME, tensors)
    write_json(folder / CONFIG_NAME, peft_config)


def export_peft(model: nn.Module, path: str | os.PathLike, src: str, tgt: str) -> Path:
    """Write direction ``src → tgt`` as a standard PEFT LoRA folder (replacing a previous export there as a whole);
    returns the folder."""
    folder = recover_folder(path)
    _check_replaceable(folder, CONFIG_NAME)
    with atomic_folder(folder) as built:
        _write_peft_direction(model, built, src, tgt)
    return folder


def export_all(model: nn.Module, path: str | os.PathLike) -> dict[str, Path]:
    """Every direction the adapter serves as a PEFT LoRA in ``path/<src>-<tgt>`` (for multi-LoRA serving, e.g.
    vLLM) and ``path/directions.json``, the whole folder replaced at once. Returns direction key → folder."""
    config = patched_config(model)
    folder = recover_folder(path)
    _check_replaceable(folder, DIRECTIONS_NAME)
    keys = [direction_key(s, t) for s, t in config.supported_directions()]
    with atomic_folder(folder) as built:
        for (src, tgt), key in zip(config.supported_directions(), keys):
            (built / key).mkdir()
            _write_peft_direction(model, built / key, src, tgt)
        write_json(built / DIRECTIONS_NAME, {"method": config.method, "directions": keys})
    return {key: folder / key for key in keys}
