import pytest
from tiny_models import tiny_causal_lm
from train_helpers import tiny_tokenizer, toy_pairs

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.patch import apply_routed_lora, routed_modules
from lora_route.bench.decoding import first_line_stopping, routed_decode_overhead, write_decoding_plot
from lora_route.kernels import cpu_ext

pytest.importorskip("peft")


def test_routed_decode_overhead_measures_every_model_and_leaves_the_model_alone():
    model, tokenizer = tiny_causal_lm("gemma3"), tiny_tokenizer()
    result = routed_decode_overhead(model, tokenizer, prompts=4, new_tokens=3, reps=2, r=2, r_uni=4)
    assert result["routed_backend"] == ("cpu" if cpu_ext.available() else "torch")
    torch_too = {"lora_route_unilora_torch"} if cpu_ext.available() else set()
    assert set(result["ratio_to_unpatched"]) == {"unpatched", "lora_route_unilora", "peft_mixed"} | torch_too
    assert result["ratio_to_unpatched"]["unpatched"] == 1.0 and result["paired_ratio_median"]["unpatched"] == 1.0
    (peft_1, peft_2), (base_1, base_2) = result["seconds"]["peft_mixed"], result["seconds"]["unpatched"]
    assert result["paired_ratio_median"]["peft_mixed"] == pytest.approx((peft_1 / base_1 + peft_2 / base_2) / 2)
    assert all(len(times) == 2 and min(times) > 0 for times in result["seconds"].values())
    assert result["met"] == (result["ratio_to_unpatched"]["lora_route_unilora"] <= result["target_ratio"])
    module_us = result["module_us_per_call"]
    assert set(module_us) == set(result["seconds"])
    assert all(times["prefill"] > 0 and times["decode"] > 0 for times in module_us.values())
    assert result["module_extra_us_per_decode_call"]["peft_mixed"] == pytest.approx(
        module_us["peft_mixed"]["decode"] - module_us["unpatched"]["decode"])
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in model.modules())
    assert not routed_modules(model) and not model.training and not hasattr(model, "peft_config")
    with pytest.raises(ValueError, match="reps"):
        routed_decode_overhead(model, tokenizer, reps=0)


def test_first_line_stopping_and_its_plot(tmp_path):
    tokenizer = tiny_tokenizer()
    trained = apply_routed_lora(tiny_causal_lm("gemma3", seed=1), RoutedLoRAConfig("crosslora", ["en", "de", "zh"],
                                                                                    r=2, alpha=4.0))
    pairs = toy_pairs([("en", "de"), ("de", "zh")], count=3)
    rows = first_line_stopping({"base": (tiny_causal_lm("gemma3"), tokenizer), "crosslora": (trained, tokenizer)},
                               pairs, batch_size=4)
    assert [row["model"] for row in rows] == ["base", "crosslora"]
    assert [row["target_speedup"] for row in rows] == [3.0, 1.5]
    for row in rows:
        seconds = row["seconds"]
        assert row["messages"] == 6 and set(seconds) == {"stop_at_first_line", "stop_at_first_line_full_output_layer",
                                                          "stop_at_first_line_one_batch", "decode_to_eos"}
        # in one batch the token budget follows the longest source of all six: rows that reach it write on
        assert row["identical_outputs"]["stop_at_first_line"] == 6
        assert row["identical_outputs"]["stop_at_first_line_full_output_layer"] == 6
        assert row["speedup_full_output_layer"] == pytest.approx(
            seconds["decode_to_eos"] / seconds["stop_at_first_line_full_output_layer"])
        assert 0 <= row["identical_outputs"]["stop_at_first_line_one_batch"] <= 6
        assert row["speedup"] == pytest.approx(seconds["decode_to_eos"] / seconds["stop_at_first_line"])
        assert row["speedup_one_batch"] == pytest.approx(seconds["decode_to_eos"] /
                                                         seconds["stop_at_first_line_one_batch"])
    with pytest.raises(ValueError, match="at least one test pair"):
        first_line_stopping({}, [], batch_size=4)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        first_line_stopping({}, pairs, batch_size=0)
    overhead = routed_decode_overhead(tiny_causal_lm("gemma3"), tokenizer, prompts=2, new_tokens=2, reps=1, r=2,
                                      r_uni=4)
    path = tmp_path / "decoding.png"
    write_decoding_plot({"label": "test", "routed_decode_overhead": overhead, "first_line_stopping": rows}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
