"""Target-only logits equal the model's own; CE / R-Drop KL sums follow the documented reduction."""
import pytest
import torch
import torch.nn.functional as F
from tiny_models import randomize_adapters
from train_helpers import tiny_setup, toy_pairs

from lora_route.adapters.patch import route
from lora_route.data.collate import collate, encode_pairs
from lora_route.train.objective import TargetLogits, token_loss_sums


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_target_logits_match_full_forward(arch, side):
    model, tok = tiny_setup(arch=arch, dropout=0.0)
    randomize_adapters(model, seed=1)
    pairs = toy_pairs([("en", "de"), ("zh", "en")], count=2)
    batch = collate(encode_pairs(pairs, tok, max_length=200).examples, tok.pad_token_id, side)
    with torch.no_grad(), route(model, batch.src, batch.tgt):
        full = model(**batch.model_inputs()).logits
        logits, targets = TargetLogits(model)(batch.input_ids, batch.attention_mask, batch.labels, batch.position_ids)
    mask = batch.labels[:, 1:] != -100
    torch.testing.assert_close(logits, full[:, :-1][mask].float(), rtol=1e-5, atol=1e-5)
    assert torch.equal(targets, batch.labels[:, 1:][mask])
    assert logits.shape[0] == batch.num_target_tokens


def test_softcapping_applied():
    model, tok = tiny_setup(arch="gemma3", dropout=0.0)
    model.config.final_logit_softcapping = 0.5
    batch = collate(encode_pairs(toy_pairs([("en", "de")], 1), tok, max_length=200).examples, 0)
    with torch.no_grad(), route(model, batch.src, batch.tgt):
        full = model(**batch.model_inputs()).logits
        logits, _ = TargetLogits(model)(batch.input_ids, batch.attention_mask, batch.labels)
    assert logits.abs().max() <= 0.5
    torch.testing.assert_close(logits, full[:, :-1][batch.labels[:, 1:] != -100].float(), rtol=1e-5, atol=1e-5)


def test_ce_and_symmetric_kl_sums():
    torch.manual_seed(0)
    logits = torch.randn(5, 11)
    targets = torch.randint(0, 11, (5,))
    plain = token_loss_sums(logits, targets, rdrop=False)
    torch.testing.assert_close(plain.ce, F.cross_entropy(logits, targets, reduction="sum"))
    assert plain.kl is None and plain.tokens == 5
    same = token_loss_sums(torch.cat([logits, logits]), torch.cat([targets, targets]), rdrop=True)
    torch.testing.assert_close(same.ce, plain.ce)
    assert same.kl.abs() < 1e-6 and same.tokens == 5
    other = torch.randn(5, 11)
    both = token_loss_sums(torch.cat([logits, other]), torch.cat([targets, targets]), rdrop=True)
    p, q = logits.softmax(-1), other.softmax(-1)
    manual = 0.5 * ((p * (p.log() - q.log())).sum() + (q * (q.log() - p.log())).sum())
    torch.testing.assert_close(both.kl, manual, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both.ce, 0.5 * (F.cross_entropy(logits, targets, reduction="sum")
                                               + F.cross_entropy(other, targets, reduction="sum")))
    with pytest.raises(ValueError, match="different targets"):
        token_loss_sums(torch.cat([logits, other]), torch.cat([targets, targets.roll(1)]), rdrop=True)
    with pytest.raises(ValueError, match="odd"):
        token_loss_sums(logits, targets, rdrop=True)
    with pytest.raises(ValueError):
        token_loss_sums(logits, targets[:3], rdrop=False)
