"""Training-test helpers: a tiny character tokenizer (ids < 128: pad 0, bos 1, eos 2, unk 3, matching
tests/tiny_models.py), toy parallel pairs and a tiny patched model."""
from __future__ import annotations

EXTRA_CHARS = "äöüßÄÖÜéèàçñ中文猫狗房子树书水谢"


def tiny_tokenizer():
    """``PreTrainedTokenizerFast``: one token per character, BOS prepended, ``decode`` joins characters."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = ["\n"] + [chr(c) for c in range(32, 127)] + list(dict.fromkeys(EXTRA_CHARS))
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    assert len(vocab) <= 128, len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                           special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


LANGS = ["en", "de", "zh"]
WORDS = {"en": ["cat", "dog", "house", "tree", "book", "water"],
         "de": ["Katze", "Hund", "Haus", "Baum", "Buch", "Wasser"],
         "zh": ["猫", "狗", "房子", "树", "书", "水"]}


def toy_pairs(directions, count=12):
    """Deterministic word-sequence 'translations' between en/de/zh (learnable by a tiny model)."""
    from lora_route.data.corpus import TranslationPair

    pairs = []
    for src, tgt in directions:
        for i in range(count):
            idx = [(i + k) % 6 for k in range(1 + i % 3)]
            pairs.append(TranslationPair(src, tgt, " ".join(WORDS[src][j] for j in idx),
                                         " ".join(WORDS[tgt][j] for j in idx), "toy"))
    return pairs


def tiny_setup(method="crosslora", arch="gemma3", dropout=0.1, seed=0, **adapter):
    """A tiny patched model (tests/tiny_models.py) + the tiny tokenizer."""
    import torch
    from tiny_models import tiny_causal_lm

    from lora_route.adapters.config import RoutedLoRAConfig
    from lora_route.adapters.patch import apply_routed_lora

    model = tiny_causal_lm(arch, seed=seed)
    torch.manual_seed(seed)
    apply_routed_lora(model, RoutedLoRAConfig(method=method, languages=LANGS, r=4, alpha=8, dropout=dropout,
                                              **adapter))
    return model, tiny_tokenizer()
