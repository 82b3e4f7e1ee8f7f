"""Training dataset: one query with a group of 1 positive + (train_group_size - 1) negatives."""

from __future__ import annotations

import random
from typing import Dict, List, Sequence, Union

from torch.utils.data import Dataset

from .readers import Record
from ..inputs import check_int
from ..utils import UsageError


class TrainDataset(Dataset):
    """Samples each item's group deterministically from (seed, epoch, index), so resumed and
    multi-process runs see the same groups.

    Negatives are drawn without replacement when there are enough and with replacement when a
    record has fewer than needed. With ``unfold_each_positive`` every (query, positive) pair is an
    item; otherwise one positive is drawn per epoch.
    """

    def __init__(
        self,
        records: Sequence[Record],
        train_group_size: int = 2,
        seed: int = 42,
        unfold_each_positive: bool = False,
    ) -> None:
        # an int: 2.5 failed at the first item with a bare TypeError from random.sample
        self.group_size = check_int("train_group_size (1 positive + negatives)", train_group_size, 1)
        self.records = list(records)
        for i, record in enumerate(self.records):  # here, named, not as an IndexError at some step of training
            if not isinstance(record, Record):
                raise TypeError(f"records[{i}] must be a Record (see load_records), got {type(record).__name__}.")
            where = record.origin or f"records[{i}]"
            if not record.positives:
                raise UsageError(f"{where}: query {record.query[:60]!r} has no positive; every record needs one.")
            if self.group_size > 1 and not record.negatives:
                raise UsageError(f"{where}: query {record.query[:60]!r} has no negatives, but train_group_size "
                                 f"{self.group_size} needs {self.group_size - 1} per query (load_records(..., "
                                 "min_negatives=...) checks this when reading).")
        self.seed = seed
        self.epoch = 0
        self.items: List[tuple[int, int]] = (
            [(r, p) for r, rec in enumerate(self.records) for p in range(len(rec.positives))]
            if unfold_each_positive
            else [(r, -1) for r in range(len(self.records))]
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict[str, Union[str, List[str]]]:
        rec_idx, pos_idx = self.items[index]
        record = self.records[rec_idx]
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        positive = record.positives[pos_idx] if pos_idx >= 0 else rng.choice(record.positives)
        return {"query": record.query, "documents": [positive] + sample_negatives(record.negatives, self.group_size - 1, rng)}


def sample_negatives(negatives: Sequence[str], n: int, rng: random.Random) -> List[str]:
    """``n`` negatives: without replacement when enough exist, else all of them plus random repeats."""
    if n <= 0:
        return []
    if not negatives:
        raise UsageError("no negatives to sample from")
    if len(negatives) >= n:
        return rng.sample(list(negatives), n)
    picked = list(negatives)
    rng.shuffle(picked)
    return picked + rng.choices(list(negatives), k=n - len(picked))
