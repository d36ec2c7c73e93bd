"""The model layer on the real embedded Gemma 3 270M: mixed-direction translate and the PEFT export round trip."""
import pytest
import torch
from tiny_models import randomize_adapters

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.io import export_peft
from lora_route.adapters.patch import apply_routed_lora, route
from lora_route.eval.generation import translate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma():
    models = pytest.importorskip("lora_route.models.loading")
    try:
        return models.load_embedded_model(torch.float32)
    except ImportError as err:
        pytest.skip(f"embedded model unavailable: {err}")


def test_mixed_translate_and_peft_export_on_gemma3(gemma, tmp_path):
    peft = pytest.importorskip("peft")
    model, tokenizer = gemma
    apply_routed_lora(model, RoutedLoRAConfig("unilora", ["en", "de", "zh"], r=4, r_uni=64))
    randomize_adapters(model, seed=0, std=0.01)
    sentences = ["Good morning.", "Das Wetter ist schön.", "Open the file"]
    src, tgt = ["en", "de", "en"], ["de", "en", "zh"]
    mixed = translate(model, tokenizer, sentences, src, tgt, max_new_tokens=8)
    alone = [translate(model, tokenizer, [s], [a], [b], max_new_tokens=8)[0] for s, a, b in zip(sentences, src, tgt)]
    assert mixed == alone
    ids = tokenizer(["Translate the following German sentences into English:\nHallo\n"], return_tensors="pt").input_ids
    with route(model, ["de"], ["en"]):
        expected = model(ids).logits
    folder = export_peft(model, tmp_path / "de-en", "de", "en")
    from lora_route.models.loading import load_embedded_model

    served = peft.PeftModel.from_pretrained(load_embedded_model(torch.float32)[0], str(folder))
    torch.testing.assert_close(served(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
