"""InfoNCE (contrastive cross-entropy) for embedders."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..distributed import gather_with_grad
from .base import (TEXT_IDS, ContrastiveSettings, RetrievalLoss, check_text_ids, gather_text_ids, groups, mask_false_negatives,
                   mask_group_copies)
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
    * ``document_text_ids`` [B * G] (optional; :class:`retrievals.data.TextIdsCollator`
      gives it): ids equal for equal document texts. A column holding another copy of a query's own positive
      (another query's positive when queries share an answer, or a hard negative equal to it) is left out of that
      query's softmax, instead of scoring the right document as a negative. Across processes the ids are
      gathered too (8 bytes a document), so copies on other processes are left out as well.

    Use it with L2-normalised embeddings and a small temperature (0.02-0.05), or with raw dot
    products and temperature 1.
    """

    name = "infonce"
    reads = ('query_embeddings', 'document_embeddings', TEXT_IDS)
    optional = (TEXT_IDS,)
    Settings = ContrastiveSettings

    def forward(self, query_embeddings: torch.Tensor, document_embeddings: torch.Tensor,
                document_text_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, group = groups(self.name, query_embeddings, document_embeddings)
        ids = None if document_text_ids is None else check_text_ids(document_text_ids, batch * group).to(query_embeddings.device)
        q = query_embeddings.float()
        d = document_embeddings.float()
        if not self.use_inbatch_neg:
            if group < 2:
                raise UsageError("use_inbatch_neg=False needs train_group_size >= 2 (a positive and negatives).")
            scores = torch.einsum("bd,bgd->bg", q, d.view(batch, group, -1)) / self.temperature
            target = torch.zeros(batch, dtype=torch.long, device=q.device)
            if ids is not None:  # a hard negative equal to the positive (records not read by load_records)
                scores = mask_group_copies(scores, ids)
            return F.cross_entropy(scores, target)
        offset = 0
        if self.negatives_cross_device:
            d, rank = gather_with_grad(d)
            offset = rank * batch * group
            ids = None if ids is None else gather_text_ids(ids)  # the same rows as the gathered documents
        scores = q @ d.T / self.temperature
        target = offset + torch.arange(batch, device=q.device) * group
        if ids is not None:
            scores = mask_false_negatives(scores, ids, target)
        return F.cross_entropy(scores, target)
