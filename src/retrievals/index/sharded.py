"""Corpus encoding that scales past memory: fixed-size shards on disk, resumable, split across torchrun processes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..training.distributed import world
from ..utils import logger


def encode_sharded(model: Any, texts: Sequence[str], folder: str | os.PathLike, shard_size: int = 10000,
                   batch_size: int = 64, is_query: bool = False) -> np.ndarray:
    """Embeddings of ``texts``, written as ``shard-00000.npy`` ... under ``folder`` and returned memory-mapped.

    Shard ``i`` is encoded by process ``i % world_size`` (torchrun), written to a temporary file and
    renamed, so a killed run resumes at the first missing shard. A ``manifest.json`` with a hash of the
    texts and the model settings guards against mixing shards of different corpora or models.
    """
    if not texts:
        raise ValueError("no texts to encode")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = json.dumps(getattr(model, "retrieval_config", None).__dict__ if hasattr(model, "retrieval_config") else {},
                          sort_keys=True, default=str)
    digest = hashlib.sha256(("\n".join(texts) + "\x00" + settings + f"\x00{is_query}\x00{shard_size}").encode()).hexdigest()[:16]
    manifest = folder / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text())["hash"] != digest:
        raise ValueError(f"{folder} holds shards of another corpus, model or shard size; use an empty folder.")
    rank, size = world()
    if rank == 0 and not manifest.is_file():
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps({"hash": digest, "count": len(texts), "shard_size": shard_size}))
        os.replace(tmp, manifest)
    n_shards = max(1, -(-len(texts) // shard_size))
    for i in range(rank, n_shards, size):
        path = folder / f"shard-{i:05d}.npy"
        if path.is_file():
            continue
        part = texts[i * shard_size : (i + 1) * shard_size]
        emb = model.encode(list(part), batch_size=batch_size, is_query=is_query, show_progress_bar=False)
        tmp = folder / f".shard-{i:05d}.tmp.npy"
        np.save(tmp, np.asarray(emb, dtype=np.float32))
        os.replace(tmp, path)
        logger.info("encoded shard %d/%d (%d texts)", i + 1, n_shards, len(part))
    if size > 1:
        import torch.distributed as dist

        dist.barrier()
    parts = [np.load(folder / f"shard-{i:05d}.npy", mmap_mode="r") for i in range(n_shards)]
    return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])
