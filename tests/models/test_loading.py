"""Model loading: local folders / names, dtype validation, and the embedded Gemma 3 270M (integration)."""
import pytest
import torch
from tiny_models import tiny_causal_lm
from train_helpers import tiny_tokenizer

from lora_route.models.loading import embedded_model_dir, load_model, resolve_dtype


def test_load_local_folder(tmp_path):
    tiny_causal_lm("llama").save_pretrained(tmp_path / "m")
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "m")
    model, tok = load_model(str(tmp_path / "m"), dtype="bfloat16")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.bfloat16 and not model.training
    assert tok.pad_token == tok.eos_token


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        load_model(str(tmp_path / "file.bin"))
    with pytest.raises(ValueError):
        load_model("")
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8")
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(torch.float32) is torch.float32


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_ROUTE_CACHE", str(tmp_path))
    assert embedded_model_dir() == tmp_path / "gemma3-270m-hf"


@pytest.mark.integration
def test_embedded_model_loads_and_predicts():
    model, tokenizer = load_model("embedded")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert 260e6 < sum(p.numel() for p in model.parameters()) < 280e6
    assert (embedded_model_dir() / "model.safetensors").is_file()
    ids = tokenizer("Translate the following English sentences into German:\nGood morning, how are you?\n",
                    return_tensors="pt").input_ids
    shuffled = torch.cat([ids[:, :1], ids[:, 1:].flip(1)], dim=1)
    with torch.no_grad():
        real, scrambled = (model(input_ids=x, labels=x).loss for x in (ids, shuffled))
    assert real < scrambled - 2.0  # a real language model, not random weights
