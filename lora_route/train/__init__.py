"""Training: recipes (YAML), the stage trainer with R-Drop, checkpoints with exact resume, DDP, and the pivot
pseudo-corpus (:mod:`.pseudo`).

It may import evaluation, data, models, adapters, kernels and common; nothing of analysis, benchmarks, experiments or
the command line.
"""
from lora_route.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from lora_route.train.config import ConfigError, RecipeConfig, StageConfig, TrainingSection, load_recipe, parse_recipe
from lora_route.train.distributed import DistContext, setup_distributed
from lora_route.train.objective import TargetLogits, token_loss_sums
from lora_route.train.recipe import run_recipe
from lora_route.train.trainer import NonFiniteTrainingError, Trainer, TrainResult, epoch_micro_batches, lr_lambda

__all__ = [
    "CheckpointError", "ConfigError", "DistContext", "RecipeConfig", "StageConfig", "TargetLogits", "Trainer",
    "TrainResult", "TrainingSection", "epoch_micro_batches", "latest_checkpoint", "load_checkpoint", "load_recipe",
    "lr_lambda", "parse_recipe", "run_recipe", "save_checkpoint", "setup_distributed", "token_loss_sums",
    "NonFiniteTrainingError",
]
