"""Listwise cross-entropy over late-interaction (MaxSim) scores, for ColBERT."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F

from ..distributed import gather_padded_with_grad
from ..models.rankers.colbert import maxsim
from .base import (TEXT_IDS, ContrastiveSettings, RetrievalLoss, check_text_ids, gather_text_ids, groups, mask_false_negatives,
                   mask_group_copies)
from ..utils import UsageError


@dataclasses.dataclass
class MaxSimSettings(ContrastiveSettings):
    temperature: float = 0.05  # MaxSim averages lie in [-1, 1]
    use_inbatch_neg: bool = False


class MaxSimCrossEntropyLoss(RetrievalLoss):
    """Cross-entropy of each query's positive among its candidates, scored with :func:`maxsim` (the function
    inference scores with), divided by ``temperature`` (MaxSim averages lie in [-1, 1]: about 0.05).

    Inputs: ``query_vectors`` [B, Lq, dim] with ``query_mask``, ``document_vectors`` [B * G, Ld, dim] with
    ``document_mask``, query-major (row ``i * G`` is query ``i``'s positive, then its ``G - 1`` negatives).

    * ``use_inbatch_neg=False``: each query against its own group (needs ``G >= 2``).
    * ``use_inbatch_neg=True``: every document of the batch is a candidate for every query.
    * ``negatives_cross_device=True`` (with in-batch negatives, under torchrun): the documents of every process
      are candidates, gathered with gradient (padded to a common length), so the mean of the processes' losses
      equals one process's loss on the global batch.
    * ``document_text_ids`` [B * G] (optional): ids equal for equal document texts. A column holding another copy
      of a query's own positive (another query's positive, or a hard negative equal to it) is left out of that
      query's softmax instead of being scored as a negative; across processes the ids are gathered too.
    """

    name = "ce"
    reads = ("query_vectors", "query_mask", "document_vectors", "document_mask", TEXT_IDS)
    optional = (TEXT_IDS,)
    Settings = MaxSimSettings

    def forward(self, query_vectors: torch.Tensor, query_mask: torch.Tensor, document_vectors: torch.Tensor,
                document_mask: torch.Tensor, document_text_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, group = groups(self.name, query_vectors, document_vectors, dims=3)
        ids = None if document_text_ids is None else check_text_ids(document_text_ids, batch * group).to(query_vectors.device)
        q, d = query_vectors.float(), document_vectors.float()
        if not self.use_inbatch_neg:
            if group < 2:
                raise UsageError("use_inbatch_neg=False needs train_group_size >= 2 (a positive and negatives).")
            scores = maxsim(q, query_mask, d.view(batch, group, *d.shape[1:]), document_mask.view(batch, group, -1))
            target = torch.zeros(batch, dtype=torch.long, device=q.device)
            if ids is not None:  # a hard negative equal to the positive
                scores = mask_group_copies(scores, ids)
            return F.cross_entropy(scores / self.temperature, target)
        offset = 0
        if self.negatives_cross_device:
            (d, document_mask), rank = gather_padded_with_grad(d, document_mask)
            offset = rank * batch * group
            ids = None if ids is None else gather_text_ids(ids)  # the same rows as the gathered documents
        scores = maxsim(q, query_mask, d, document_mask, all_pairs=True)
        target = offset + torch.arange(batch, device=q.device) * group
        if ids is not None:
            scores = mask_false_negatives(scores, ids, target)
        return F.cross_entropy(scores / self.temperature, target)
