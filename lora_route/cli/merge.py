"""``lora-route merge``: DATM — merge the XX→En adapters of a method='dat' checkpoint within each language group into
one adapter per group (the DAT paper's group-wise merging) and save the smaller checkpoint; En→XX adapters are kept."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lora_route.adapters.io import load_adapters, read_adapter_config, save_adapters
from lora_route.adapters.merging import (
    DARE_COMBINES,
    DEFAULT_DENSITY,
    DEFAULT_DROP_PROB,
    MERGE_METHODS,
    apply_merged,
    datm_merge,
)
from lora_route.common.files import write_json
from lora_route.models.loading import load_model


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("checkpoint", help="lora_route adapter folder of a method='dat' model")
    parser.add_argument("--out", required=True, help="folder for the merged adapters (+ datm_report.json)")
    parser.add_argument("--method", choices=MERGE_METHODS, default="ties")
    parser.add_argument("--density", type=float, default=DEFAULT_DENSITY, help="TIES: fraction of ΔW kept")
    parser.add_argument("--drop-prob", type=float, default=DEFAULT_DROP_PROB, help="DARE: drop probability")
    parser.add_argument("--combine", choices=DARE_COMBINES, default="ties", help="DARE: combine step")
    parser.add_argument("--scale", type=float, default=1.0, help="factor on the merged ΔW (TIES' λ)")
    parser.add_argument("--weights", type=_weights, default=None,
                        help="per source language weights, e.g. de=1,is=0.5")
    parser.add_argument("--seed", type=int, default=0, help="DARE's random drop")
    parser.add_argument("--model", default="embedded", help="the checkpoint's base model")
    parser.add_argument("--dtype", default="float32")
    parser.set_defaults(func=run)


def _weights(text: str) -> dict[str, float]:
    """``de=1,is=0.5`` -> ``{"de": 1.0, "is": 0.5}``."""
    weights = {}
    for item in text.split(","):
        lang, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected lang=value pairs such as de=1,is=0.5; got {item!r}")
        try:
            weights[lang.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    return weights


def run(args: argparse.Namespace) -> int:
    config = read_adapter_config(args.checkpoint)["config"]
    if config.get("method") != "dat":
        raise ValueError(f"{args.checkpoint} holds a {config.get('method')!r} adapter; DATM merging needs a "
                         "method='dat' checkpoint (XX→En adapters per language)")
    model, _ = load_model(args.model, dtype=args.dtype)
    load_adapters(model, args.checkpoint)
    merged = datm_merge(model, method=args.method, weights=args.weights, density=args.density,
                        drop_prob=args.drop_prob, seed=args.seed, combine=args.combine, scale=args.scale)
    del model
    base, _ = load_model(args.model, dtype=args.dtype)
    folder = save_adapters(apply_merged(base, merged), Path(args.out))
    write_json(folder / "datm_report.json", merged.report)
    print(json.dumps({"adapters": str(folder), **{k: merged.report[k] for k in
                                                  ("method", "adapters_before", "adapters_after", "groups")}}))
    return 0
