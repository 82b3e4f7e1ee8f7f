"""Training data: reading and validating records, group sampling and collators."""

from .collator import EmbeddingCollator, TeacherCollator, TeacherVectors, TextIdsCollator
from .dataset import TrainDataset
from .readers import DataError, Record, load_records

__all__ = ["DataError", "EmbeddingCollator", "Record", "TeacherCollator", "TeacherVectors", "TextIdsCollator", "TrainDataset", "load_records"]
