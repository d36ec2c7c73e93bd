"""Evaluation of multilingual translation: mixed-direction decoding, sacreBLEU / chrF++ / COMET-22 / off-target
rate per direction, averages over the papers' groups (En→X, X→En, non-English, zero-shot), N×N matrices.

Test sets are sequences of pair records with attributes or keys ``src_lang, tgt_lang, src, tgt``
(``lora_route.data.corpus.TranslationPair`` or plain dicts).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .langid import NO_LANGUAGE, LanguageIdentifier, normalize_language_code
from .report import plot_heatmap, read_jsonl, save_matrix_json, write_json, write_jsonl

Direction = tuple[str, str]
GROUPS = ("en_to_x", "x_to_en", "en_centric", "non_english", "supervised", "zero_shot", "all")
MATRIX_METRICS = ("bleu", "chrf", "comet", "off_target_rate")
DEFAULT_COMET_MODEL = "Unbabel/wmt22-comet-da"


# --------------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class TranslationOutput:
    """One decoded test example: the reference ``ref`` and the system output ``hyp`` for ``src``."""
    src_lang: str
    tgt_lang: str
    src: str
    ref: str
    hyp: str


def _field(pair: Any, name: str) -> Any:
    value = pair.get(name) if isinstance(pair, Mapping) else getattr(pair, name, None)
    if not isinstance(value, str):
        raise ValueError(f"test pair {pair!r} has no string field {name!r}")
    return value


def pair_fields(pair: Any) -> tuple[str, str, str, str]:
    """(src_lang, tgt_lang, src, tgt) of a TranslationPair-like object or dict."""
    return tuple(_field(pair, n) for n in ("src_lang", "tgt_lang", "src", "tgt"))  # type: ignore[return-value]


def save_outputs(path: str | os.PathLike, outputs: Sequence[TranslationOutput]) -> Path:
    """JSONL with ``src_lang, tgt_lang, src, ref, hyp`` per line (atomic)."""
    return write_jsonl(path, (asdict(o) for o in outputs))


def load_outputs(path: str | os.PathLike) -> list[TranslationOutput]:
    """Read a file written by ``save_outputs``; a record missing a field raises ValueError naming it."""
    outputs = []
    for number, record in enumerate(read_jsonl(path), 1):
        missing = [k for k in ("src_lang", "tgt_lang", "src", "ref", "hyp") if not isinstance(record.get(k), str)]
        if missing:
            raise ValueError(f"{path}: record {number} lacks string field(s) {missing}")
        outputs.append(TranslationOutput(**{k: record[k] for k in ("src_lang", "tgt_lang", "src", "ref", "hyp")}))
    return outputs


# --------------------------------------------------------------------------------------------------- metrics
def bleu_tokenizer(tgt_lang: str) -> str:
    """sacreBLEU tokenizer for a target language: 'zh' for Chinese, 'ja-mecab' / 'ko-mecab' when their extras
    are installed (else 'char' with a warning), '13a' otherwise."""
    lang = normalize_language_code(tgt_lang)
    if lang == "zh":
        return "zh"
    if lang in ("ja", "ko"):
        name = f"{lang}-mecab"
        try:
            from sacrebleu.metrics.bleu import _get_tokenizer
            _get_tokenizer(name)()
            return name
        except (ImportError, RuntimeError) as err:
            warnings.warn(f"sacreBLEU tokenizer {name!r} unavailable ({str(err).strip().splitlines()[0]}); "
                          f"falling back to 'char' for {tgt_lang} (pip install 'sacrebleu[{lang}]')", stacklevel=2)
            return "char"
    return "13a"


def _check_parallel(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if isinstance(hyps, str) or isinstance(refs, str):
        raise TypeError("hyps and refs must be lists of strings, not a single string")
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise ValueError("cannot score an empty set of hypotheses")
    for name, seq in (("hypothesis", hyps), ("reference", refs)):
        for i, s in enumerate(seq):
            if not isinstance(s, str):
                raise TypeError(f"{name} {i} is {type(s).__name__}, expected str")


def bleu_chrf(hyps: Sequence[str], refs: Sequence[str], tgt_lang: str) -> dict[str, Any]:
    """Corpus BLEU (tokenizer by target language) and chrF++ (char order 6, word order 2) with signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    _check_parallel(hyps, refs)
    bleu = BLEU(tokenize=bleu_tokenizer(tgt_lang))
    chrf = CHRF(word_order=2)
    bleu_score = bleu.corpus_score(list(hyps), [list(refs)])
    chrf_score = chrf.corpus_score(list(hyps), [list(refs)])
    return {"bleu": bleu_score.score, "chrf": chrf_score.score,
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}


@dataclass
class OffTarget:
    """Off-target count: outputs whose language is not the target. ``rate = off_target / counted``; outputs
    with no letters (only placeholders/numbers) are ``undetermined`` and not counted; empty outputs count."""
    off_target: int
    counted: int
    undetermined: int
    labels: list[str]

    @property
    def rate(self) -> float | None:
        return self.off_target / self.counted if self.counted else None


def off_target(hyps: Sequence[str], tgt_lang: str, identifier: LanguageIdentifier) -> OffTarget:
    """Language-ID each output and count those not in ``tgt_lang``."""
    if isinstance(hyps, str):
        raise TypeError("hyps must be a list of strings")
    target = normalize_language_code(tgt_lang)
    labels = identifier.identify(list(hyps))
    undetermined = sum(label == NO_LANGUAGE for label in labels)
    off = sum(label != target for label in labels if label != NO_LANGUAGE)
    return OffTarget(off_target=off, counted=len(labels) - undetermined, undetermined=undetermined, labels=labels)


class CometScorer:
    """COMET-22 (``unbabel-comet``) from a model name (downloads, needs the hub) or a local checkpoint path.

    Loads lazily on first use. When the package is missing or the model cannot be loaded it warns once and
    ``score`` returns None from then on, so the other metrics are still reported.
    """

    def __init__(self, model: str = DEFAULT_COMET_MODEL, batch_size: int = 16, gpus: int | None = None):
        if not isinstance(model, str) or not model:
            raise ValueError(f"COMET model must be a name or a checkpoint path, got {model!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model_name = model
        self.batch_size = batch_size
        self.gpus = gpus
        self._model = None
        self.unavailable: str | None = None

    def _load(self):
        if self._model is not None or self.unavailable is not None:
            return self._model
        try:
            from comet import download_model, load_from_checkpoint
            path = Path(self.model_name)
            if path.is_file():
                checkpoint = str(path)
            elif path.is_dir() and (path / "checkpoints" / "model.ckpt").is_file():
                checkpoint = str(path / "checkpoints" / "model.ckpt")
            else:
                checkpoint = download_model(self.model_name)
            self._model = load_from_checkpoint(checkpoint)
        except Exception as err:  # ImportError, no hub, corrupt checkpoint: all mean "no COMET for this run"
            self.unavailable = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            warnings.warn(f"COMET unavailable ({self.model_name}): {self.unavailable}; reporting BLEU, chrF++ and "
                          "off-target rate only (pip install unbabel-comet and give a reachable model or a local "
                          "checkpoint path)", stacklevel=3)
        return self._model

    def score(self, sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str]) -> float | None:
        """System-level COMET ×100, or None when COMET is unavailable."""
        _check_parallel(hyps, refs)
        if len(sources) != len(hyps):
            raise ValueError(f"{len(sources)} sources but {len(hyps)} hypotheses")
        model = self._load()
        if model is None:
            return None
        import torch
        gpus = self.gpus if self.gpus is not None else int(torch.cuda.is_available())
        data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hyps, refs)]
        prediction = model.predict(data, batch_size=self.batch_size, gpus=gpus, progress_bar=False)
        return 100.0 * float(prediction.system_score)


@dataclass
class DirectionScore:
    """Scores of one direction (BLEU, chrF++ and COMET on the 0-100 scale; off-target rate as a fraction)."""
    src_lang: str
    tgt_lang: str
    n: int
    bleu: float
    chrf: float
    comet: float | None
    off_target_rate: float | None
    off_target: int
    undetermined: int
    zero_shot: bool | None
    bleu_signature: str
    chrf_signature: str


def score_direction(outputs: Sequence[TranslationOutput], *, identifier: LanguageIdentifier | None,
                    comet: CometScorer | None = None, zero_shot: bool | None = None) -> DirectionScore:
    """Score the outputs of a single direction."""
    if not outputs:
        raise ValueError("no outputs to score")
    directions = {(o.src_lang, o.tgt_lang) for o in outputs}
    if len(directions) != 1:
        raise ValueError(f"score_direction takes one direction, got {sorted(directions)}")
    src_lang, tgt_lang = directions.pop()
    hyps = [o.hyp for o in outputs]
    refs = [o.ref for o in outputs]
    surface = bleu_chrf(hyps, refs, tgt_lang)
    lid = off_target(hyps, tgt_lang, identifier) if identifier is not None else None
    comet_score = comet.score([o.src for o in outputs], hyps, refs) if comet is not None else None
    return DirectionScore(src_lang=src_lang, tgt_lang=tgt_lang, n=len(outputs), bleu=surface["bleu"],
                          chrf=surface["chrf"], comet=comet_score,
                          off_target_rate=lid.rate if lid else None, off_target=lid.off_target if lid else 0,
                          undetermined=lid.undetermined if lid else 0, zero_shot=zero_shot,
                          bleu_signature=surface["bleu_signature"], chrf_signature=surface["chrf_signature"])


# ---------------------------------------------------------------------------------------------------- groups
def _as_direction_set(directions: Iterable[Sequence[str]] | None) -> set[Direction] | None:
    if directions is None:
        return None
    result = set()
    for d in directions:
        if isinstance(d, str):
            parts = d.replace("→", "-").split("-")
        else:
            parts = list(d)
        if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
            raise ValueError(f"a direction is (src, tgt) or 'src-tgt', got {d!r}")
        result.add((parts[0], parts[1]))
    return result


def direction_groups(directions: Iterable[Direction], *, trained: Iterable[Sequence[str]] | None = None,
                     pivot: str = "en") -> dict[str, list[Direction]]:
    """Split directions into the papers' groups. ``en_centric`` = En→X ∪ X→En; ``non_english`` = neither side
    is the pivot; ``zero_shot`` = absent from ``trained`` (empty when ``trained`` is None), ``supervised`` = in it."""
    directions = list(dict.fromkeys(tuple(d) for d in directions))
    trained_set = _as_direction_set(trained)
    groups: dict[str, list[Direction]] = {g: [] for g in GROUPS}
    for src, tgt in directions:
        if src == tgt:
            raise ValueError(f"direction {src}→{tgt} has the same source and target language")
        groups["all"].append((src, tgt))
        if src == pivot:
            groups["en_to_x"].append((src, tgt))
        if tgt == pivot:
            groups["x_to_en"].append((src, tgt))
        if pivot in (src, tgt):
            groups["en_centric"].append((src, tgt))
        else:
            groups["non_english"].append((src, tgt))
        if trained_set is not None:
            groups["supervised" if (src, tgt) in trained_set else "zero_shot"].append((src, tgt))
    return groups


def _mean(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def group_averages(scores: Mapping[Direction, DirectionScore], *, trained: Iterable[Sequence[str]] | None = None,
                   pivot: str = "en") -> dict[str, dict[str, Any]]:
    """Macro averages (mean over directions, as in the papers' tables) of every metric per group.
    A metric missing in any direction of a group (e.g. COMET unavailable) is None for that group."""
    groups = direction_groups(scores.keys(), trained=trained, pivot=pivot)
    result = {}
    for name, members in groups.items():
        entry: dict[str, Any] = {"n_directions": len(members), "directions": [f"{s}-{t}" for s, t in members]}
        for metric in MATRIX_METRICS:
            entry[metric] = _mean([getattr(scores[d], metric) for d in members])
        result[name] = entry
    return result


def score_matrix(scores: Mapping[Direction, DirectionScore], languages: Sequence[str], metric: str
                 ) -> list[list[float | None]]:
    """N×N matrix of one metric: row = source language, column = target; None where not evaluated."""
    if metric not in MATRIX_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {MATRIX_METRICS}")
    if len(set(languages)) != len(languages):
        raise ValueError(f"languages must be distinct, got {list(languages)}")
    unknown = {lang for d in scores for lang in d} - set(languages)
    if unknown:
        raise ValueError(f"scores contain languages {sorted(unknown)} missing from {list(languages)}")
    return [[getattr(scores[(s, t)], metric) if (s, t) in scores else None for t in languages] for s in languages]


@dataclass
class EvaluationResult:
    """Per-direction scores, group averages and the settings they were measured with."""
    directions: dict[Direction, DirectionScore]
    groups: dict[str, dict[str, Any]]
    languages: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"languages": self.languages, "settings": self.settings, "groups": self.groups,
                "directions": [asdict(s) for s in self.directions.values()]}

    def save(self, out_dir: str | os.PathLike, *, heatmaps: bool = True) -> Path:
        """Write ``metrics.json``, ``matrix_<metric>.json`` and (matplotlib permitting) ``heatmap_<metric>.png``."""
        out = Path(out_dir)
        write_json(out / "metrics.json", self.to_dict())
        for metric in MATRIX_METRICS:
            matrix = score_matrix(self.directions, self.languages, metric)
            if all(v is None for row in matrix for v in row):
                continue
            save_matrix_json(out / f"matrix_{metric}.json", matrix, self.languages, metric)
            if heatmaps:
                shown = [[None if v is None else (100.0 * v if metric == "off_target_rate" else v) for v in row]
                         for row in matrix]
                label = "off-target %" if metric == "off_target_rate" else {"bleu": "BLEU", "chrf": "chrF++",
                                                                             "comet": "COMET"}[metric]
                title = f"{label} ({self.settings.get('name', out.name)})"
                plot_heatmap(out / f"heatmap_{metric}.png", shown, self.languages, title)
        return out / "metrics.json"


def evaluate_outputs(outputs: Sequence[TranslationOutput], *, trained: Iterable[Sequence[str]] | None = None,
                     identifier: LanguageIdentifier | None = None, comet: CometScorer | None = None,
                     pivot: str = "en", languages: Sequence[str] | None = None,
                     settings: Mapping[str, Any] | None = None) -> EvaluationResult:
    """Score decoded outputs per direction and per group. ``trained`` = directions seen in training (defines
    zero-shot); ``languages`` fixes the matrix order (default: pivot first, then order of appearance)."""
    if not outputs:
        raise ValueError("no outputs to evaluate")
    by_direction: dict[Direction, list[TranslationOutput]] = {}
    for o in outputs:
        if not isinstance(o, TranslationOutput):
            raise TypeError(f"expected TranslationOutput, got {type(o).__name__}")
        by_direction.setdefault((o.src_lang, o.tgt_lang), []).append(o)
    trained_set = _as_direction_set(trained)
    scores = {d: score_direction(outs, identifier=identifier, comet=comet,
                                 zero_shot=None if trained_set is None else d not in trained_set)
              for d, outs in by_direction.items()}
    if languages is None:
        seen = dict.fromkeys(lang for d in by_direction for lang in d)
        languages = ([pivot] if pivot in seen else []) + [lang for lang in seen if lang != pivot]
    meta = dict(settings or {})
    meta.update({"pivot": pivot, "trained_directions": None if trained_set is None else sorted(
        f"{s}-{t}" for s, t in trained_set), "langid_backend": identifier.backend if identifier else None,
        "comet_model": comet.model_name if comet else None,
        "comet_unavailable": comet.unavailable if comet else "not requested"})
    return EvaluationResult(directions=scores, groups=group_averages(scores, trained=trained_set, pivot=pivot),
                            languages=list(languages), settings=meta)


# -------------------------------------------------------------------------------------------------- decoding
def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding stays small."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def decode_pairs(model, tokenizer, pairs: Sequence[Any], *, num_beams: int = 1, batch_size: int = 16,
                 max_new_tokens_ratio: float = 2.0, max_new_tokens_extra: int = 16, template: str | None = None,
                 progress: bool = True, translate_fn: Callable[..., list[str]] | None = None) -> list[str]:
    """Translate every pair's ``src`` into its ``tgt_lang``, directions mixed inside batches.

    Batches are length-sorted over all directions; a batch may generate ``ceil(ratio · longest source in
    tokens) + extra`` new tokens. Returns outputs in the order of ``pairs``. ``translate_fn`` defaults to
    ``lora_route.generation.translate``.
    """
    if num_beams < 1 or not isinstance(num_beams, int):
        raise ValueError(f"num_beams must be a positive int, got {num_beams!r}")
    if max_new_tokens_ratio <= 0 or max_new_tokens_extra < 0:
        raise ValueError("max_new_tokens_ratio must be > 0 and max_new_tokens_extra >= 0")
    if translate_fn is None:
        from .generation import translate as translate_fn
    fields = [pair_fields(p) for p in pairs]
    if not fields:
        return []
    lengths = [len(ids) for ids in tokenizer([f[2] for f in fields], add_special_tokens=False)["input_ids"]]
    batches = length_sorted_batches(lengths, batch_size)
    outputs: list[str | None] = [None] * len(fields)
    from tqdm.auto import tqdm
    with tqdm(total=len(fields), desc=f"decoding ({'greedy' if num_beams == 1 else f'beam {num_beams}'})",
              unit="sent", disable=not progress) as bar:
        for batch in batches:
            max_new = math.ceil(max_new_tokens_ratio * max(lengths[i] for i in batch)) + max_new_tokens_extra
            kwargs = {"num_beams": num_beams, "max_new_tokens": max_new, "batch_size": len(batch)}
            if template is not None:
                kwargs["template"] = template
            hyps = translate_fn(model, tokenizer, [fields[i][2] for i in batch], [fields[i][0] for i in batch],
                                [fields[i][1] for i in batch], **kwargs)
            if len(hyps) != len(batch):
                raise RuntimeError(f"translate returned {len(hyps)} outputs for {len(batch)} inputs")
            for i, hyp in zip(batch, hyps):
                outputs[i] = hyp
            bar.update(len(batch))
    return outputs  # type: ignore[return-value]


def evaluate_model(model, tokenizer, pairs: Sequence[Any], out_dir: str | os.PathLike, *,
                   trained: Iterable[Sequence[str]] | None = None, name: str | None = None, num_beams: int = 1,
                   batch_size: int = 16, identifier: LanguageIdentifier | None = None,
                   comet: CometScorer | None = None, pivot: str = "en", languages: Sequence[str] | None = None,
                   heatmaps: bool = True, progress: bool = True, settings: Mapping[str, Any] | None = None,
                   **decode_kwargs) -> EvaluationResult:
    """Decode ``pairs``, save ``outputs.jsonl`` (src, ref, hyp per line) and the metrics/matrices/heatmaps into
    ``out_dir``, and return the result. ``settings`` are recorded in ``metrics.json``."""
    hyps = decode_pairs(model, tokenizer, pairs, num_beams=num_beams, batch_size=batch_size, progress=progress,
                        **decode_kwargs)
    outputs = [TranslationOutput(s, t, src, ref, hyp) for (s, t, src, ref), hyp in
               zip((pair_fields(p) for p in pairs), hyps)]
    out = Path(out_dir)
    save_outputs(out / "outputs.jsonl", outputs)
    result = evaluate_outputs(outputs, trained=trained, identifier=identifier, comet=comet, pivot=pivot,
                              languages=languages, settings={"name": name or out.name, "num_beams": num_beams,
                                                             "batch_size": batch_size, "n_pairs": len(outputs),
                                                             **(settings or {})})
    result.save(out, heatmaps=heatmaps)
    return result
