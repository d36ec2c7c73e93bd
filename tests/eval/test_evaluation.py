"""Metrics agree with sacrebleu's command line; off-target rate, groups, matrices, decoding order, compare."""
import json
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest

from lora_route.cli import build_parser
from lora_route.eval.evaluate import (
    decode_pairs,
    direction_groups,
    evaluate_outputs,
    length_sorted_batches,
    score_matrix,
)
from lora_route.eval.langid import LanguageIdentifier
from lora_route.eval.metrics import CometScorer, bleu_chrf, bleu_tokenizer, off_target
from lora_route.eval.outputs import TranslationOutput, load_outputs, save_outputs
from lora_route.eval.report import direction_table, load_run, summary_table

SACREBLEU = Path(sys.executable).with_name("sacrebleu")

DE_REFS = ["Die Datei konnte nicht geöffnet werden.", "Speichern Sie das Dokument, bevor Sie es schließen.",
           "Der Drucker ist nicht bereit.", "Es ist ein unbekannter Fehler aufgetreten.",
           "Möchten Sie die Änderungen übernehmen?", "Verbindung zum Server wird hergestellt …"]
DE_HYPS = ["Die Datei kann nicht geöffnet werden.", "Speichern Sie das Dokument vor dem Schließen.",
           "Der Drucker ist nicht bereit.", "Ein unbekannter Fehler ist aufgetreten.",
           "Wollen Sie die Änderungen anwenden?", "Verbinde mit dem Server …"]
ZH_REFS = ["无法打开文件。", "关闭前请保存文档。", "打印机未就绪。", "发生未知错误。", "是否应用更改？", "正在连接服务器……"]
ZH_HYPS = ["不能打开文件。", "请在关闭之前保存文档。", "打印机没有准备好。", "出现了未知错误。", "应用这些更改吗？",
           "连接到服务器……"]


def _cli_scores(tmp_path, hyps, refs, tokenize):
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("\n".join(refs) + "\n", encoding="utf-8")
    hyp.write_text("\n".join(hyps) + "\n", encoding="utf-8")
    out = subprocess.run([str(SACREBLEU), str(ref), "-i", str(hyp), "-m", "bleu", "chrf", "--chrf-word-order", "2",
                          "-tok", tokenize, "-w", "4"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


@pytest.mark.parametrize("lang,hyps,refs,tok", [("de", DE_HYPS, DE_REFS, "13a"), ("zh", ZH_HYPS, ZH_REFS, "zh")])
def test_metrics_equal_sacrebleu_cli(tmp_path, lang, hyps, refs, tok):
    assert bleu_tokenizer(lang) == tok
    ours = bleu_chrf(hyps, refs, lang)
    cli_bleu, cli_chrf = _cli_scores(tmp_path, hyps, refs, tok)
    assert 0 < cli_bleu["score"] < 100 and 0 < cli_chrf["score"] < 100 and cli_chrf["name"] == "chrF2++"
    assert round(ours["bleu"], 4) == pytest.approx(cli_bleu["score"], abs=1e-9)
    assert round(ours["chrf"], 4) == pytest.approx(cli_chrf["score"], abs=1e-9)
    assert ours["bleu_signature"] == cli_bleu["signature"] and ours["chrf_signature"] == cli_chrf["signature"]


def test_tokenizer_choice():
    assert bleu_tokenizer("en") == "13a" and bleu_tokenizer("zh_CN") == "zh"
    try:
        import MeCab  # noqa: F401
        assert bleu_tokenizer("ja") == "ja-mecab"
    except ImportError:
        with pytest.warns(UserWarning, match="falling back to 'char'"):
            assert bleu_tokenizer("ja") == "char"


def test_metric_input_validation():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bleu_chrf(["a", "b"], ["a"], "de")
    with pytest.raises(ValueError, match="empty"):
        bleu_chrf([], [], "de")
    with pytest.raises(TypeError):
        bleu_chrf("abc", "abc", "de")
    with pytest.raises(ValueError, match="not a language code"):
        bleu_chrf(["a"], ["a"], "#?")


def test_off_target_rate_exact_on_mixed_set():
    hyps = ["Die Datei konnte nicht geöffnet werden.",            # de: on target
            "The file could not be opened.",                       # en: off
            "Der Drucker ist nicht bereit.",                       # de: on
            "无法打开文件，因为它不存在。",                              # zh: off
            "",                                                    # empty: off
            "%s: %d",                                              # no language: not counted
            "Не удалось открыть файл, так как он не существует.",  # ru: off
            "Möchten Sie die Änderungen übernehmen?"]              # de: on
    result = off_target(hyps, "de", LanguageIdentifier())
    assert (result.off_target, result.counted, result.undetermined) == (4, 7, 1)
    assert result.rate == pytest.approx(4 / 7)
    assert result.labels == ["de", "en", "de", "zh", "<empty>", "<none>", "ru", "de"]


def test_groups():
    directions = [("en", "de"), ("en", "zh"), ("de", "en"), ("zh", "en"), ("de", "zh"), ("zh", "de")]
    trained = [("en", "de"), ("en", "zh"), ("de", "en"), ("zh", "en")]
    g = direction_groups(directions, trained=trained)
    assert g["en_to_x"] == [("en", "de"), ("en", "zh")]
    assert g["x_to_en"] == [("de", "en"), ("zh", "en")]
    assert g["non_english"] == g["zero_shot"] == [("de", "zh"), ("zh", "de")]
    assert g["supervised"] == trained and len(g["en_centric"]) == 4 and len(g["all"]) == 6
    assert direction_groups(directions)["zero_shot"] == []          # unknown training set: no zero-shot group
    assert direction_groups(directions, trained=["en-de"])["zero_shot"][0] == ("en", "zh")
    with pytest.raises(ValueError, match="same source and target"):
        direction_groups([("de", "de")])
    with pytest.raises(ValueError, match="must have exactly two languages"):
        direction_groups(directions, trained=[("en", "de", "zh")])


def _outputs():
    outs = []
    for i, (dh, dr, zh, zr) in enumerate(zip(DE_HYPS, DE_REFS, ZH_HYPS, ZH_REFS)):
        outs += [TranslationOutput("en", "de", f"source {i}", dr, dh), TranslationOutput("en", "zh", f"s {i}", zr, zh),
                 TranslationOutput("zh", "de", zr, dr, dr if i % 2 else "The file."),
                 TranslationOutput("de", "zh", dr, zr, zr)]
    return outs


def test_evaluate_outputs_groups_matrix_and_files(tmp_path):
    result = evaluate_outputs(_outputs(), trained=[("en", "de"), ("en", "zh")], identifier=LanguageIdentifier(),
                              settings={"name": "toy"})
    assert result.languages == ["en", "de", "zh"]
    d = result.directions
    assert d[("de", "zh")].bleu == pytest.approx(100.0) and d[("de", "zh")].off_target_rate == 0
    assert d[("zh", "de")].off_target_rate == pytest.approx(0.5) and d[("zh", "de")].zero_shot is True
    assert d[("en", "de")].bleu == pytest.approx(bleu_chrf(DE_HYPS, DE_REFS, "de")["bleu"])
    g = result.groups
    assert g["zero_shot"]["bleu"] == pytest.approx((d[("zh", "de")].bleu + d[("de", "zh")].bleu) / 2)
    assert g["en_to_x"]["chrf"] == pytest.approx((d[("en", "de")].chrf + d[("en", "zh")].chrf) / 2)
    assert g["x_to_en"]["n_directions"] == 0 and g["x_to_en"]["bleu"] is None
    assert g["all"]["comet"] is None
    matrix = score_matrix(d, result.languages, "bleu")
    assert matrix[0] == [None, d[("en", "de")].bleu, d[("en", "zh")].bleu]
    assert matrix[2][1] == d[("zh", "de")].bleu and matrix[1][1] is None
    with pytest.raises(ValueError, match="missing from"):
        score_matrix(d, ["en", "de"], "bleu")
    with pytest.raises(ValueError, match="unknown metric"):
        score_matrix(d, result.languages, "rouge")

    result.save(tmp_path / "run_a")
    files = {p.name for p in (tmp_path / "run_a").iterdir()}
    assert {"metrics.json", "matrix_bleu.json", "heatmap_bleu.png", "heatmap_off_target_rate.png"} <= files
    assert "matrix_comet.json" not in files                      # COMET was not computed
    saved = json.loads((tmp_path / "run_a" / "matrix_bleu.json").read_text())
    assert saved["matrix"] == matrix and saved["languages"] == ["en", "de", "zh"]
    assert (tmp_path / "run_a" / "heatmap_bleu.png").read_bytes()[:4] == b"\x89PNG"
    assert load_run(tmp_path / "run_a")["groups"]["zero_shot"]["n_directions"] == 2


def test_outputs_roundtrip_and_corrupt_file(tmp_path):
    outs = _outputs()
    save_outputs(tmp_path / "o.jsonl", outs)
    assert load_outputs(tmp_path / "o.jsonl") == outs
    (tmp_path / "bad.jsonl").write_text('{"src_lang": "en"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="lacks string field"):
        load_outputs(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text('{"src_lang": \n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad2.jsonl:1"):
        load_outputs(tmp_path / "bad2.jsonl")
    with pytest.raises(FileNotFoundError):
        load_outputs(tmp_path / "missing.jsonl")


def test_comet_unavailable_warns_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "comet", None)     # import comet -> ImportError
    scorer = CometScorer("Unbabel/wmt22-comet-da")
    with pytest.warns(UserWarning, match="COMET unavailable"):
        assert scorer.score(["a"], ["b"], ["c"]) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scorer.score(["a"], ["b"], ["c"]) is None
    assert "comet" in scorer.unavailable and "Error" in scorer.unavailable


def test_comet_scores_through_package_api(monkeypatch, tmp_path):
    seen = {}

    class FakeModel:
        def predict(self, data, batch_size, gpus, progress_bar):
            seen["data"] = data
            return types.SimpleNamespace(system_score=0.8125)

    fake = types.ModuleType("comet")
    fake.download_model = lambda name: pytest.fail("a local checkpoint must not be downloaded")
    fake.load_from_checkpoint = lambda path: seen.setdefault("path", path) and FakeModel()
    monkeypatch.setitem(sys.modules, "comet", fake)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"x")
    assert CometScorer(str(ckpt), gpus=0).score(["s"], ["h"], ["r"]) == pytest.approx(81.25)
    assert seen["path"] == str(ckpt) and seen["data"] == [{"src": "s", "mt": "h", "ref": "r"}]


class _WordTokenizer:
    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}


def test_decode_pairs_mixed_length_sorted_batches():
    pairs = [{"src_lang": s, "tgt_lang": t, "src": " ".join(["w"] * n), "tgt": "x"}
             for s, t, n in [("en", "de", 3), ("de", "zh", 9), ("zh", "en", 1), ("en", "zh", 6), ("de", "en", 4)]]
    calls = []

    def fake_translate(model, tokenizer, sentences, src, tgt, *, num_beams, max_new_tokens, batch_size):
        calls.append((list(src), list(tgt), num_beams, max_new_tokens, batch_size))
        return [f"{s}>{t}:{len(x.split())}" for x, s, t in zip(sentences, src, tgt)]

    hyps = decode_pairs(None, _WordTokenizer(), pairs, num_beams=5, batch_size=2, max_new_tokens_ratio=1.5,
                        max_new_tokens_extra=4, progress=False, translate_fn=fake_translate)
    assert hyps == ["en>de:3", "de>zh:9", "zh>en:1", "en>zh:6", "de>en:4"]
    assert [c[:2] for c in calls] == [(["de", "en"], ["zh", "zh"]), (["de", "en"], ["en", "de"]), (["zh"], ["en"])]
    assert [c[3] for c in calls] == [14 + 4, 6 + 4, 2 + 4]           # ceil(1.5 * longest) + extra
    assert all(c[2] == 5 for c in calls)
    assert length_sorted_batches([1, 5, 3], 2) == [[1, 2], [0]]
    with pytest.raises(ValueError):
        decode_pairs(None, _WordTokenizer(), pairs, num_beams=0, translate_fn=fake_translate)
    with pytest.raises(ValueError, match="no string field 'src'"):
        decode_pairs(None, _WordTokenizer(), [{"src_lang": "en", "tgt_lang": "de"}], translate_fn=fake_translate)


def test_compare_tables_and_command(tmp_path, capsys):
    base = evaluate_outputs(_outputs(), trained=[("en", "de"), ("en", "zh")], identifier=LanguageIdentifier())
    base.save(tmp_path / "base", heatmaps=False)
    better = [TranslationOutput(o.src_lang, o.tgt_lang, o.src, o.ref, o.ref) for o in _outputs()]
    evaluate_outputs(better, trained=[("en", "de"), ("en", "zh")]).save(tmp_path / "tuned", heatmaps=False)
    runs = {"base": load_run(tmp_path / "base"), "tuned": load_run(tmp_path / "tuned")}
    table = summary_table(runs)
    header, rule, row_base, row_tuned = table.splitlines()
    assert header.startswith("| run | En-centric BLEU | En-centric chrF++ | En-centric off-tgt % |")
    assert "zero-shot BLEU" in header and "COMET" not in header
    assert row_tuned.split(" | ")[1] == "100.00"
    assert row_tuned.split(" | ")[3] == "–"   # no language ID in the tuned run
    assert "de→zh*" in direction_table(runs)

    args = build_parser("compare").parse_args(["compare", str(tmp_path / "base"), str(tmp_path / "tuned"), "--directions"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| base |" in printed and "| tuned |" in printed and "en→de" in printed
    assert "Paired bootstrap" not in printed  # no run named lora and no --baseline
    save_outputs(tmp_path / "base" / "outputs.jsonl", _outputs())
    save_outputs(tmp_path / "tuned" / "outputs.jsonl", better)
    args = build_parser("compare").parse_args(["compare", str(tmp_path / "base"), str(tmp_path / "tuned"),
                                               "--baseline", "base", "--samples", "200"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "Paired bootstrap against base (200 resamples" in printed
    assert "| tuned | zero_shot | 2 | +19.07 [+5.43, +38.81] p=0.030 * |" in printed
    args = build_parser("compare").parse_args(["compare", str(tmp_path / "base"), "--baseline", "lora"])
    with pytest.raises(ValueError, match="--baseline 'lora' is none of the runs"):
        args.func(args)
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        load_run(tmp_path / "nothing")


def test_load_test_pairs_local_and_errors(tmp_path):
    from lora_route.data.corpus import TranslationPair, write_pairs_jsonl
    from lora_route.eval.test_sets import load_test_pairs

    pairs = [TranslationPair("en", "de", f"file {i}", f"Datei {i}") for i in range(5)]
    pairs += [TranslationPair("de", "en", f"Datei {i}", f"file {i}") for i in range(3)]
    write_pairs_jsonl(pairs, tmp_path / "test.jsonl")
    got = load_test_pairs("local", ["en", "de"], path=str(tmp_path / "test.jsonl"), per_direction=2)
    assert [(p.src_lang, p.tgt_lang) for p in got] == [("en", "de")] * 2 + [("de", "en")] * 2
    with pytest.raises(ValueError, match=r"no pairs for \['en-zh'\]"):
        load_test_pairs("local", ["en", "de", "zh"], directions=[("en", "de"), ("en", "zh")],
                        path=str(tmp_path / "test.jsonl"))
    with pytest.raises(ValueError, match="unknown test source"):
        load_test_pairs("wmt", ["en", "de"])
    with pytest.raises(ValueError, match="needs --test-path"):
        load_test_pairs("local", ["en", "de"])


def test_unknown_language_codes_in_outputs_are_refused(tmp_path):
    """An outputs file with an unknown target code used to be scored as 100 % off-target."""
    import json

    record = {"src_lang": "en", "tgt_lang": "xx", "src": "Hello", "ref": "Hallo", "hyp": "Hallo"}
    (tmp_path / "o.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=r"o.jsonl: record 1: tgt_lang 'xx' is not a language lora_route knows"):
        load_outputs(tmp_path / "o.jsonl")
    with pytest.raises(ValueError, match="src_lang 'qq'"):
        TranslationOutput("qq", "de", "a", "b", "c")
    assert TranslationOutput("zh_CN", "deu_Latn", "a", "b", "c").tgt_lang == "deu_Latn"
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no outputs"):
        load_outputs(tmp_path / "empty.jsonl")
