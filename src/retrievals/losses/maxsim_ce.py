"""Listwise cross-entropy over late-interaction (MaxSim) scores, for ColBERT."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..distributed import gather_padded_with_grad
from ..models.rankers.colbert import maxsim
from .base import ContrastiveSettings, RetrievalLoss
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
    """

    name = "ce"
    reads = ("query_vectors", "query_mask", "document_vectors", "document_mask")
    Settings = MaxSimSettings

    def forward(self, query_vectors: torch.Tensor, query_mask: torch.Tensor, document_vectors: torch.Tensor,
                document_mask: torch.Tensor) -> torch.Tensor:
        batch = query_vectors.shape[0]
        if document_vectors.shape[0] % batch:
            raise UsageError(f"{document_vectors.shape[0]} documents do not split into groups for {batch} queries.")
        group = document_vectors.shape[0] // batch
        q, d = query_vectors.float(), document_vectors.float()
        if not self.use_inbatch_neg:
            if group < 2:
                raise UsageError("use_inbatch_neg=False needs train_group_size >= 2 (a positive and negatives).")
            scores = maxsim(q, query_mask, d.view(batch, group, *d.shape[1:]), document_mask.view(batch, group, -1))
            target = torch.zeros(batch, dtype=torch.long, device=q.device)
            return F.cross_entropy(scores / self.temperature, target)
        offset = 0
        if self.negatives_cross_device:
            (d, document_mask), rank = gather_padded_with_grad(d, document_mask)
            offset = rank * batch * group
        scores = maxsim(q, query_mask, d, document_mask, all_pairs=True)
        target = offset + torch.arange(batch, device=q.device) * group
        return F.cross_entropy(scores / self.temperature, target)
