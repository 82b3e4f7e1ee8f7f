"""InfoNCE (contrastive cross-entropy) for embedders."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather_with_grad
from .base import ContrastiveSettings, RetrievalLoss
from ..utils import UsageError


class InfoNCELoss(RetrievalLoss):
    """Softmax cross-entropy of each query over candidate documents, scores divided by ``temperature``.

    Inputs: ``query_embeddings`` [B, d] and ``document_embeddings`` [B * G, d] laid out query-major
    (row ``i * G`` is query ``i``'s positive, the next ``G - 1`` rows its negatives).

    * ``use_inbatch_neg=True``: every document in the batch is a candidate for every query (the
      standard choice; works with ``G == 1``, i.e. no hard negatives).
    * ``use_inbatch_neg=False``: each query is scored only against its own group (needs ``G >= 2``).
    * ``negatives_cross_device=True`` (with in-batch negatives, under torchrun): documents of all
      processes are candidates; gathered with gradient, so the result equals one process training
      on the global batch.

    Use it with L2-normalised embeddings and a small temperature (0.02-0.05), or with raw dot
    products and temperature 1.
    """

    name = "infonce"
    reads = ('query_embeddings', 'document_embeddings')
    Settings = ContrastiveSettings


    def forward(self, query_embeddings: torch.Tensor, document_embeddings: torch.Tensor) -> torch.Tensor:
        batch = query_embeddings.shape[0]
        if document_embeddings.shape[0] % batch:
            raise UsageError(f"{document_embeddings.shape[0]} documents do not split into groups for {batch} queries.")
        group = document_embeddings.shape[0] // batch
        q = query_embeddings.float()
        d = document_embeddings.float()
        if not self.use_inbatch_neg:
            if group < 2:
                raise UsageError("use_inbatch_neg=False needs train_group_size >= 2 (a positive and negatives).")
            scores = torch.einsum("bd,bgd->bg", q, d.view(batch, group, -1)) / self.temperature
            target = torch.zeros(batch, dtype=torch.long, device=q.device)
            return F.cross_entropy(scores, target)
        offset = 0
        if self.negatives_cross_device:
            d, rank = gather_with_grad(d)
            offset = rank * batch * group
        scores = q @ d.T / self.temperature
        target = offset + torch.arange(batch, device=q.device) * group
        return F.cross_entropy(scores, target)
