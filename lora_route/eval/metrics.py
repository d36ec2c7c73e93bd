"""Scores of translation outputs: sacreBLEU BLEU (tokenizer by target language) and chrF++, COMET-22 when
available, the off-target rate (language ID), per direction."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.bleu import _get_tokenizer

from lora_route.eval.langid import NO_LANGUAGE, LanguageIdentifier, normalize_language_code
from lora_route.eval.outputs import TranslationOutput

DEFAULT_COMET_MODEL = "Unbabel/wmt22-comet-da"


def bleu_tokenizer(tgt_lang: str) -> str:
    """sacreBLEU tokenizer for a target language: 'zh' for Chinese, 'ja-mecab' / 'ko-mecab' when their extras
    are installed (else 'char' with a warning), '13a' otherwise."""
    lang = normalize_language_code(tgt_lang)
    if lang == "zh":
        return "zh"
    if lang in ("ja", "ko"):
        name = f"{lang}-mecab"
        try:
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
