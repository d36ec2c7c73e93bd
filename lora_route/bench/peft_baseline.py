"""PEFT baselines: ``get_peft_model`` with one LoRA, or with one LoRA per direction served by PEFT's mixed-batch
forward (``adapter_names=``)."""
from __future__ import annotations

from torch import nn

from lora_route.bench.errors import ProviderUnavailable


def peft_adapter_name(index: int) -> str:
    """PEFT adapter name of direction ``index`` (``"d0"``, ``"d1"``, ...)."""
    if index < 0:
        raise ValueError(f"adapter index must be >= 0, got {index}")
    return f"d{index}"


def attach_peft_loras(model: nn.Module, target_modules: tuple[str, ...], rank: int, alpha: float, count: int, *,
                      autocast_adapter_dtype: bool):
    """Wrap ``model`` (modified in place) with ``count`` PEFT LoRAs named by :func:`peft_adapter_name`, dropout 0,
    on the ``nn.Linear`` modules named ``target_modules``. Returns the ``peft.PeftModel`` in ``model``'s training or
    eval mode (PEFT's wrapper itself starts in training mode); adapter ``d0`` is active;
    :class:`ProviderUnavailable` when peft is not installed.
    ``autocast_adapter_dtype`` is PEFT's switch: True (its training default) keeps bf16/fp16 models' adapters in
    float32 and runs them in float32; False keeps them in the base dtype."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ProviderUnavailable(f"peft is not installed ({error}); pip install peft") from error
    if count < 1:
        raise ValueError(f"need at least one adapter, got count={count}")

    def config():
        return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target_modules), bias="none")

    training = model.training
    peft_model = get_peft_model(model, config(), adapter_name=peft_adapter_name(0),
                                autocast_adapter_dtype=autocast_adapter_dtype)
    for index in range(1, count):
        peft_model.add_adapter(peft_adapter_name(index), config(), autocast_adapter_dtype=autocast_adapter_dtype)
    return peft_model.train(training)
