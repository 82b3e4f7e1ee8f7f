"""Run under torchrun: cross-device negatives with text ids, on fixed vectors (no model).

    torchrun --nproc_per_node N tests/losses/dist_text_ids_check.py OUT.pt

Each of the N processes takes its share of one 4-query global batch (group 2) in which queries 0 and 3 share a
positive, as do 1 and 2: with N=2 each copy sits on another process, so only gathered ids leave it out. Rank 0
saves the mean loss over processes and the gradients of the global vectors (summed over processes, as DDP's
averaging of each process's mean loss gives the single process's gradient times N): N=1 and N=2 must agree.
"""

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from retrievals.data.collator import hash_text_ids
from retrievals.distributed import shutdown_distributed
from retrievals.losses import InfoNCELoss, MaxSimCrossEntropyLoss


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    texts = ["A", "n0", "B", "n1", "B", "n2", "A", "n3"]  # query i's positive is row 2i
    generator = torch.Generator().manual_seed(0)
    d_all = F.normalize(torch.randn(8, 8, generator=generator), dim=-1)
    d_all[6], d_all[4] = d_all[0], d_all[2]  # copies of one text: the same vector
    q_all = d_all[0::2].clone()  # each query its positive's vector: only the copies hold the loss up
    ids_all = hash_text_ids(texts)
    share = 4 // world
    q = q_all[rank * share:(rank + 1) * share].clone().requires_grad_(True)
    d = d_all[2 * rank * share:2 * (rank + 1) * share].clone().requires_grad_(True)
    ids = ids_all[2 * rank * share:2 * (rank + 1) * share]
    loss_fn = InfoNCELoss(temperature=0.05, negatives_cross_device=True)
    loss = loss_fn(q, d, ids)
    loss.backward()
    unmasked = loss_fn(q.detach(), d.detach())
    maxsim = MaxSimCrossEntropyLoss(temperature=0.05, use_inbatch_neg=True, negatives_cross_device=True)
    ones = torch.ones
    maxsim_loss = maxsim(q.detach()[:, None], ones(share, 1), d.detach()[:, None], ones(2 * share, 1), ids)
    results = {"infonce": loss.detach(), "infonce_unmasked": unmasked.detach(), "maxsim": maxsim_loss.detach()}
    for key, value in results.items():
        dist.all_reduce(value)
        results[key] = value / world
    grads = {"grad_q": q.grad, "grad_d": d.grad}
    for key, grad in grads.items():
        parts = [torch.empty_like(grad) for _ in range(world)]
        dist.all_gather(parts, grad.contiguous())
        results[key] = torch.cat(parts) / world
    if rank == 0:
        torch.save(results, out)
    shutdown_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
