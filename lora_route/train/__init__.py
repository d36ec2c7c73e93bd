"""Training: recipes (YAML), the stage trainer with R-Drop, checkpoints with exact resume, DDP."""
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError, RecipeConfig, StageConfig, TrainingSection, load_recipe, parse_recipe
from .distributed import DistContext, setup_distributed
from .objective import TargetLogits, token_loss_sums
from .recipe import run_recipe
from .trainer import Trainer, TrainResult, epoch_micro_batches, lr_lambda

__all__ = [
    "CheckpointError", "ConfigError", "DistContext", "RecipeConfig", "StageConfig", "TargetLogits", "Trainer",
    "TrainResult", "TrainingSection", "epoch_micro_batches", "latest_checkpoint", "load_checkpoint", "load_recipe",
    "lr_lambda", "parse_recipe", "run_recipe", "save_checkpoint", "setup_distributed", "token_loss_sums",
]
