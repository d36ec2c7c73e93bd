"""Tiny random-weight causal LMs of the real architectures (hidden 32, 2 layers, vocab 128) for fast CPU tests."""
from __future__ import annotations

import torch

ARCHITECTURES = ("llama", "qwen2", "gemma2", "mistral", "gemma3")


def tiny_causal_lm(arch: str = "llama", seed: int = 0, vocab_size: int = 128, layers: int = 2):
    """A float32 model in eval mode; pad token 0, eos token 2 (bos 1)."""
    import transformers as tf

    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=256,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    configs = {
        "llama": lambda: (tf.LlamaConfig(**common), tf.LlamaForCausalLM),
        "qwen2": lambda: (tf.Qwen2Config(**common), tf.Qwen2ForCausalLM),
        "mistral": lambda: (tf.MistralConfig(**common, sliding_window=None), tf.MistralForCausalLM),
        "gemma2": lambda: (tf.Gemma2Config(**common, head_dim=8), tf.Gemma2ForCausalLM),
        "gemma3": lambda: (tf.Gemma3TextConfig(**common, head_dim=8), tf.Gemma3ForCausalLM),
    }
    if arch not in configs:
        raise ValueError(f"unknown test architecture {arch!r}")
    config, cls = configs[arch]()
    torch.manual_seed(seed)
    model = cls(config).eval()
    return model


def randomize_adapters(model, seed: int = 0, std: float = 0.2) -> None:
    """Give every adapter bank (B included, which starts at zero) random values so routes differ."""
    from lora_route.adapters.patch import routed_modules

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in routed_modules(model).values():
            for param in (module.lora_A, module.lora_B):
                param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * std)
