"""``lora-route train CONFIG [--set key=value ...] [--resume]`` (also under ``torchrun`` / ``accelerate launch``)."""
from __future__ import annotations

import argparse
import json
import logging

from lora_route.train.config import load_recipe
from lora_route.train.distributed import setup_distributed, teardown_distributed
from lora_route.train.recipe import run_recipe


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Train the stages of a recipe. Runs as is under torchrun / accelerate launch (DDP)."
    parser.add_argument("config", help="recipe YAML/JSON file, e.g. configs/unilora-demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set training.lr=1e-4 --set stages.1.training.epochs=2")
    parser.add_argument("--resume", action="store_true",
                        help="skip finished stages and continue the current one from its newest checkpoint")
    parser.add_argument("--stop-after-steps", type=int, default=None, metavar="N",
                        help="stop (with a checkpoint) after N optimizer steps of this run; continue with --resume")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.stop_after_steps is not None and args.stop_after_steps < 1:
        raise ValueError("--stop-after-steps must be >= 1")
    recipe = load_recipe(args.config, args.overrides)
    ctx = setup_distributed(args.device)
    try:
        summaries = run_recipe(recipe, ctx, resume=args.resume, stop_after_steps=args.stop_after_steps,
                               progress=not args.no_progress)
    finally:
        teardown_distributed(ctx)
    if ctx.is_main:
        for name, summary in summaries.items():
            dev = summary["dev_losses"]
            print(json.dumps({"stage": name, "completed": summary["completed"], "steps": summary["steps"],
                              "first_loss": summary["first_loss"], "last_loss": summary["last_loss"],
                              "dev_loss_first": dev[0]["dev_loss"] if dev else None,
                              "dev_loss_last": dev[-1]["dev_loss"] if dev else None,
                              "mean_step_s": summary["mean_step_s"]}))
    return 0
