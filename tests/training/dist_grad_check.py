"""Run under torchrun: gradients with cross-device negatives for a fixed global batch.

    torchrun --nproc_per_node N tests/training/dist_grad_check.py MODEL_DIR OUT.pt [embed|colbert]

Each of the N processes takes its share of the same 4-query global batch; rank 0 saves the
DDP-averaged gradients. N=1 and N=2 must give the same gradients: InfoNCE for an embedder, the
late-interaction (MaxSim) loss for a saved ColBERT folder (token vectors of different lengths per process).
"""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from retrievals import AutoModelForEmbedding, AutoModelForRanking
from retrievals.data import EmbeddingCollator
from retrievals.losses import InfoNCELoss, MaxSimCrossEntropyLoss
from retrievals.distributed import shutdown_distributed


def main(model_dir: str, out: str, kind: str = "embed") -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    items = [{"query": f"tax card question {i} " * (i + 1), "documents": [f"answer {i} fee office " * (2 * i + 1),
                                                                      f"passport form {i} renew"]} for i in range(4)]
    share = len(items) // world
    mine = items[rank * share : (rank + 1) * share]
    if kind == "colbert":
        model = AutoModelForRanking.from_pretrained(model_dir)
        batch = model.processor(mine)
        loss_fn = MaxSimCrossEntropyLoss(temperature=0.05, use_inbatch_neg=True, negatives_cross_device=True)
    else:
        model = AutoModelForEmbedding.from_pretrained(model_dir, pooling_method="mean")
        batch = EmbeddingCollator(model.processor)(mine)
        loss_fn = InfoNCELoss(temperature=0.05, negatives_cross_device=True)
    model.train()
    ddp = DistributedDataParallel(model, find_unused_parameters=True)  # as transformers' Trainer sets it for our models
    output = ddp(**batch)
    loss = loss_fn(**loss_fn.inputs_from(output))
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, out)
    # Free DDP's reducer while the group is still registered: if the reducer held the last
    # reference, the gloo group's destructor would join its threads with the GIL held and hang.
    del ddp, output, loss
    shutdown_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
