"""Layer relevance (MLAS-LoRA paper, eq. 1) and teacher→student layer mapping, on tiny random Llama models."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lora_route.analysis.relevance import (
    decoder_layers,
    layer_relevance,
    map_teacher_to_student,
    project_layer_scores,
    random_layers,
    select_top_layers,
)


def tiny_llama(layers=4, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config).eval()


def batches(seed=1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding on one row
    return [{"input_ids": ids, "attention_mask": mask}, {"input_ids": ids[:1, 2:]}]


def test_layers_known_to_differ_rank_as_expected():
    model = tiny_llama()
    layers = decoder_layers(model)
    with torch.no_grad():
        for name in ("self_attn.o_proj", "mlp.down_proj"):  # layer 1 becomes the identity
            layers[1].get_submodule(name).weight.zero_()
        layers[3].mlp.down_proj.weight.mul_(50.0)  # layer 3 changes the residual stream most
    scores = layer_relevance(model, batches())
    assert scores.shape == (4,)
    assert scores[1].item() == 0.0
    assert int(scores.argmax()) == 3
    assert select_top_layers(scores, 2)[-1] == 3 and 1 not in select_top_layers(scores, 3)


def test_relevance_equals_hidden_state_differences():
    model = tiny_llama()
    ids = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    expected = [float((hidden[i + 1] - hidden[i]).abs().sum(-1).mean(1).mean()) for i in range(3)]
    got = layer_relevance(model, [{"input_ids": ids}])
    assert got[:3].tolist() == pytest.approx(expected, rel=1e-5)


def test_select_and_random_layers():
    assert select_top_layers([0.1, 0.5, 0.5, 0.2], 2) == [1, 2]
    assert select_top_layers([0.3, 0.1, 0.3], 1) == [0]
    assert random_layers(10, 3, seed=5) == random_layers(10, 3, seed=5)
    assert len(set(random_layers(10, 10, seed=1))) == 10
    with pytest.raises(ValueError, match="select 5"):
        select_top_layers([1.0, 2.0], 5)


def test_teacher_to_student_mapping_with_different_depths():
    teacher_scores = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.7, 0.05])
    top = select_top_layers(teacher_scores, 3)
    assert top == [1, 3, 4]
    assert map_teacher_to_student(top, [2, 0, 1]) == {0: 1, 1: 3, 2: 4}
    with pytest.raises(ValueError, match="one to one"):
        map_teacher_to_student(top, [0, 1])


def test_project_layer_scores_by_relative_depth():
    assert project_layer_scores([1.0, 3.0, 5.0, 7.0], 2).tolist() == [2.0, 6.0]
    assert project_layer_scores([1.0, 3.0], 4).tolist() == [1.0, 1.0, 3.0, 3.0]
    three = project_layer_scores([0.0, 3.0], 3).tolist()
    assert three == pytest.approx([0.0, 1.5, 3.0])


def test_bad_inputs():
    model = tiny_llama(2)
    with pytest.raises(ValueError, match="no batches"):
        layer_relevance(model, [])
    with pytest.raises(ValueError, match="attention_mask"):
        layer_relevance(model, [{"input_ids": torch.zeros(2, 3, dtype=torch.long),
                                 "attention_mask": torch.ones(2, 4, dtype=torch.long)}])
    with pytest.raises(ValueError, match="decoder layers"):
        decoder_layers(torch.nn.Linear(2, 2))
