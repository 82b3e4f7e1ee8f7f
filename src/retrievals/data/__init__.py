"""Training data: reading and validating records, group sampling and collators."""

from .collator import EmbeddingCollator, TeacherCollator, TeacherVectors
from .dataset import TrainDataset
from .readers import DataError, Record, load_records

__all__ = ["DataError", "EmbeddingCollator", "Record", "TeacherCollator", "TeacherVectors", "TrainDataset", "load_records"]
