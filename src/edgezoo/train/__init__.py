"""Training pipeline: data (ImageFolder, bundled digits), typed recipe, resumable DDP engine, distillation,
evaluation and prediction from self-describing checkpoints."""
from .checkpoints import load_trained_model, read_metadata
from .config import TrainConfig, build_config, resolve_config
from .data import build_datasets, load_digits_split, write_digits_imagefolder
from .distill import distillation_loss
from .engine import TrainingDiverged, train
from .evaluate import evaluate_checkpoint, predict_images, run_eval_loader

__all__ = [
    "TrainConfig",
    "TrainingDiverged",
    "build_config",
    "build_datasets",
    "distillation_loss",
    "evaluate_checkpoint",
    "run_eval_loader",
    "load_digits_split",
    "load_trained_model",
    "predict_images",
    "read_metadata",
    "resolve_config",
    "train",
    "write_digits_imagefolder",
]
