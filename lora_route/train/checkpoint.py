"""Training checkpoints: trainable weights, optimizer, scheduler, RNG and data position, written atomically.

A checkpoint is a folder ``checkpoint-<step>`` holding
  ``trainable.safetensors``  every parameter with ``requires_grad`` (name -> tensor),
  ``optimizer.safetensors``  the optimizer's per-parameter state tensors (``state/<param id>/<key>``),
  ``rng-rank<r>.safetensors`` torch CPU (and CUDA) generator states of rank r,
  ``state.json``             step, fingerprint, parameter shapes, optimizer hyper-parameters and non-tensor state,
                             scheduler / grad-scaler state, Python RNG states, and the sha256 of every file above.
Nothing is unpickled on load. The folder is built under a temporary name and renamed into place, so a kill never
leaves a half-written checkpoint; a corrupt file, a different recipe or different shapes are refused with
:class:`CheckpointError`.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lora_route.common.files import building_folder, publish_folder, recover_folder, recover_folders

_NAME_RE = re.compile(r"^checkpoint-(\d{8})$")
STATE_FILE = "state.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not belong to this run (the message says which)."""


class _OptimizerMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    param_groups: list[dict[str, Any]]
    scalars: dict[str, dict[str, Any]]


class CheckpointState(BaseModel):
    """The schema of ``state.json``: what :func:`load_checkpoint` reads, every field typed."""

    model_config = ConfigDict(extra="forbid", strict=True)
    format_version: int
    step: Annotated[int, Field(ge=0)]
    fingerprint: str
    world_size: Annotated[int, Field(ge=1)]
    parameters: dict[str, list[int]]
    optimizer: _OptimizerMeta
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    python_rng: Annotated[list[Any], Field(min_length=3, max_length=3)]
    extra: dict[str, Any]
    sha256: dict[str, str]


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    recover_folders(folder)
    found = [p for p in folder.iterdir() if p.is_dir() and _NAME_RE.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> detached contiguous CPU copy of every trainable parameter."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def _split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{pid}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split("/", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, entry in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    return tensors


def _json_safe_python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def save_checkpoint(folder: str | Path, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, scaler=None, fingerprint: str, extra: dict | None = None, rank: int = 0,
                    world_size: int = 1, barrier=None, keep: int | None = None) -> Path:
    """Write ``folder/checkpoint-<step>`` atomically; every rank calls it (each saves its RNG), rank 0 the rest.

    ``barrier`` (callable) synchronises ranks when world_size > 1. ``keep`` deletes all but the newest ``keep``
    checkpoints afterwards. Returns the checkpoint path.
    """
    folder = Path(folder)
    final = folder / checkpoint_name(step)
    tmp = building_folder(final, "checkpoint")
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        recover_folder(final)
        tmp.mkdir()
    if barrier is not None:
        barrier()
    save_file(_rng_tensors(), str(tmp / f"rng-rank{rank}.safetensors"))
    if barrier is not None:
        barrier()
    if rank == 0:
        trainable = trainable_state(model)
        bad = [name for name, value in trainable.items() if not bool(torch.isfinite(value).all())]
        if bad:
            shutil.rmtree(tmp)
            raise ValueError(f"refusing to save a checkpoint with non-finite parameters ({', '.join(bad[:3])})")
        save_file(trainable, str(tmp / "trainable.safetensors"))
        opt_tensors, opt_meta = _split_optimizer_state(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        files = sorted(p.name for p in tmp.iterdir())
        state = {
            "format_version": FORMAT_VERSION, "step": step, "fingerprint": fingerprint, "world_size": world_size,
            "parameters": {n: list(p.shape) for n, p in model.named_parameters() if p.requires_grad},
            "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "python_rng": _json_safe_python_rng(), "extra": extra or {},
            "sha256": {name: _sha256(tmp / name) for name in files},
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        publish_folder(tmp, final)
        if keep is not None:
            for old in list_checkpoints(folder)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    if barrier is not None:
        barrier()
    return final


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of the checkpoint; CheckpointError when it is missing or not safetensors."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from None


def read_checkpoint_state(path: str | Path) -> dict:
    """The verified ``state.json`` of a checkpoint (every file's sha256 checked)."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{state_file} is corrupt: {err}") from err
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, dict) else None
        raise CheckpointError(f"{state_file}: unknown checkpoint format {version!r}")
    try:
        CheckpointState.model_validate(state)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_url=False))
        raise CheckpointError(f"{state_file} is not a valid checkpoint state ({problems})") from None
    for name, digest in state["sha256"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} lacks {name}")
        if _sha256(file) != digest:
            raise CheckpointError(f"checkpoint file {file} is corrupt (sha256 mismatch)")
    return state


def load_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler,
                    scaler=None, fingerprint: str | None, rank: int = 0, world_size: int = 1) -> dict:
    """Restore a checkpoint into the given objects and the RNGs; returns its state (``step``, ``extra``, ...).

    Raises CheckpointError when files are corrupt, the recipe fingerprint or world size differ, or parameter
    names/shapes do not match the model.
    """
    path = Path(path)
    state = read_checkpoint_state(path)
    if fingerprint is not None and state["fingerprint"] != fingerprint:
        raise CheckpointError(f"checkpoint {path} was written by a different recipe or stage "
                              f"(fingerprint {state['fingerprint']} != {fingerprint}); use a new output_dir or "
                              "restore the original settings")
    if state["world_size"] != world_size:
        raise CheckpointError(f"checkpoint {path} was written with {state['world_size']} processes, this run has "
                              f"{world_size}; the data order would differ")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    expected = {n: list(p.shape) for n, p in params.items()}
    if expected != state["parameters"]:
        missing = sorted(set(expected) - set(state["parameters"]))
        extra = sorted(set(state["parameters"]) - set(expected))
        shapes = sorted(n for n in set(expected) & set(state["parameters"]) if expected[n] != state["parameters"][n])
        raise CheckpointError(f"checkpoint {path} does not match the model: missing {missing[:5]}, unexpected "
                              f"{extra[:5]}, different shapes {shapes[:5]}")
    weights = _load_tensors(path / "trainable.safetensors")
    bad = [name for name in params if name not in weights or tuple(weights[name].shape) != tuple(params[name].shape)
           or not bool(torch.isfinite(weights[name]).all())]
    if bad:
        raise CheckpointError(f"{path / 'trainable.safetensors'}: missing, reshaped or non-finite {bad[:5]}")
    if optimizer is not None:
        opt_tensors = _load_tensors(path / "optimizer.safetensors")
        try:
            optimizer.load_state_dict(_join_optimizer_state(opt_tensors, state["optimizer"]))
        except (KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"{path / 'optimizer.safetensors'} does not fit the optimizer: {err}") from None
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name].to(param.device, param.dtype))
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    rng_file = path / f"rng-rank{rank}.safetensors"
    if not rng_file.is_file():
        raise CheckpointError(f"checkpoint {path} has no RNG state for rank {rank}")
    rng = _load_tensors(rng_file)
    torch.set_rng_state(rng["torch_cpu"])
    cuda_states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return state
