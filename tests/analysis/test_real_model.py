"""MLAS initialisation on the real embedded Gemma 3 270M (one layer, two directions, a handful of pairs)."""
import pytest
import torch

pytestmark = pytest.mark.integration


def test_mlas_init_on_the_embedded_model():
    from lora_route.adapters.config import RoutedLoRAConfig
    from lora_route.adapters.patch import apply_routed_lora, route, routed_modules
    from lora_route.analysis.mlas import MLASInit, initialise_mlas
    from lora_route.data.collate import collate, encode_pairs
    from lora_route.data.corpus import TranslationPair
    from lora_route.models.loading import load_embedded_model

    model, tokenizer = load_embedded_model()
    texts = [("The file could not be opened.", "Die Datei konnte nicht geöffnet werden."),
             ("Save the document before closing.", "Speichern Sie das Dokument vor dem Schließen."),
             ("No network connection.", "Keine Netzwerkverbindung.")]
    pairs = {("en", "de"): [TranslationPair("en", "de", s, t) for s, t in texts],
             ("de", "en"): [TranslationPair("de", "en", t, s) for s, t in texts]}
    batches = {}
    for direction, items in pairs.items():
        batch = collate(encode_pairs(items, tokenizer, max_length=64).examples, tokenizer.pad_token_id)
        batches[direction] = [{"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                               "labels": batch.labels}]
    config = RoutedLoRAConfig(method="mlas", languages=["en", "de"], r=8, alpha=16.0, dropout=0.0, layers=[17],
                              target_modules=("down_proj",))
    apply_routed_lora(model, config)
    report = initialise_mlas(model, model, batches, MLASInit(threshold=0.6))
    info = report["modules"]["model.layers.17.mlp.down_proj"]
    assert report["teacher_layers"] == [17] and info["max_normalised_awareness"] > 0.5
    assert info["general_neurons"] + sum(info["specific_neurons"].values()) == 640
    module = routed_modules(model)["model.layers.17.mlp.down_proj"]
    assert torch.count_nonzero(module.lora_B) > 0
    with torch.no_grad(), route(model, ["en", "de"], ["de", "en"]):
        logits = model(input_ids=batches[("en", "de")][0]["input_ids"][:2]).logits
    assert torch.isfinite(logits).all()
