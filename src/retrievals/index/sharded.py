"""Corpus encoding that scales past memory: fixed-size shards on disk, resumable, split across torchrun processes."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

import torch

from ..files import atomic_write_bytes, atomic_write_json
from ..inputs import as_texts, check_int
from ..utils import UsageError, state_digest
from ..distributed import world
from ..utils import logger


def encode_sharded(model: Any, texts: Sequence[str], folder: str | os.PathLike, shard_size: int = 10000,
                   batch_size: int = 64, is_query: bool = False, cache_key: Optional[str] = None) -> np.ndarray:
    """Embeddings of ``texts``, written as ``shard-00000.npy`` ... under ``folder`` and returned as one writable
    array in memory.

    Shard ``i`` is encoded by process ``i % world_size`` (torchrun), written to a temporary file and
    renamed, so a killed run resumes at the first missing shard. Shards live in a subfolder named by a
    hash of the texts, the model's weights (as loaded) and its settings, so a cache folder shared by
    several models or corpora serves each its own vectors. A model that is not a torch module (its weights
    cannot be hashed) needs ``cache_key``: a string naming it and its weights exactly.
    """
    texts = as_texts(texts, "texts")[0]
    if not texts:
        raise ValueError("no texts to encode")
    check_int("shard_size", shard_size, 1)
    root = Path(folder)
    settings = json.dumps(getattr(model, "retrieval_config", None).__dict__ if hasattr(model, "retrieval_config") else {},
                          sort_keys=True, default=str)
    if cache_key is not None:
        weights = f"key:{cache_key}"
    elif isinstance(model, torch.nn.Module):
        weights = state_digest(model)
    else:  # two such models of one class would share a cache folder: the second would get the first's vectors
        raise UsageError(f"encode_sharded: a {type(model).__name__} is not a torch module, so its weights cannot key the "
                         "cache; pass cache_key= naming the model and its weights.")
    digest = hashlib.sha256(json.dumps([list(texts), settings, weights, is_query, shard_size], ensure_ascii=False).encode())
    # one subfolder per (texts, model weights, settings): another model or corpus gets its own shards, never these
    folder = root / digest.hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    rank, size = world()
    if rank == 0 and not manifest.is_file():
        atomic_write_json(manifest, {"texts": len(texts), "shard_size": shard_size, "model_weights": weights,
                                     "settings": json.loads(settings), "is_query": is_query})
    n_shards = max(1, -(-len(texts) // shard_size))
    for i in range(rank, n_shards, size):
        path = folder / f"shard-{i:05d}.npy"
        if path.is_file():
            continue
        part = texts[i * shard_size : (i + 1) * shard_size]
        emb = model.encode(list(part), batch_size=batch_size, is_query=is_query, show_progress_bar=False)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(emb, dtype=np.float32))
        atomic_write_bytes(path, buffer.getvalue())
        logger.info("encoded shard %d/%d (%d texts)", i + 1, n_shards, len(part))
    if size > 1:
        import torch.distributed as dist

        dist.barrier()
    parts = [np.load(folder / f"shard-{i:05d}.npy", mmap_mode="r") for i in range(n_shards)]
    # one writable array in memory whatever the shard count (one shard was a read-only memory map: an in-place
    # normalisation raised there and worked with two shards)
    return np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])
