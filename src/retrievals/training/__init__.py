"""Training: arguments, the Trainer subclass, output-folder safety and distributed helpers."""

from .arguments import RetrievalTrainingArguments
from .trainer import RetrievalTrainer

__all__ = ["RetrievalTrainer", "RetrievalTrainingArguments"]
