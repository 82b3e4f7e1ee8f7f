"""The Vaswani (NPL) test collection in TREC format: ``doc-text.trec``, ``query-text.trec``, ``qrels``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Tuple

from ..data.io import read_qrels
from .readers import DataError, read_text

_DOC = re.compile(r"<DOC>\s*<DOCNO>\s*(.*?)\s*</DOCNO>(.*?)</DOC>", re.S)
_QUERY = re.compile(r"<top>\s*<num>\s*(.*?)\s*</num>\s*<title>(.*?)</title>\s*</top>", re.S)


def load_vaswani(folder: str | os.PathLike) -> Tuple[Dict[str, str], Dict[str, str], Dict[str, Dict[str, int]]]:
    """(corpus, queries, qrels); query texts are lowercased (the collection writes them in capitals)."""
    folder = Path(folder)
    for name in ("doc-text.trec", "query-text.trec", "qrels"):
        if not (folder / name).is_file():
            raise DataError(f"{folder / name}: missing (expected the Vaswani collection in TREC format)")
    corpus = {m.group(1): " ".join(m.group(2).split()) for m in _DOC.finditer(read_text(folder / "doc-text.trec"))}
    queries = {m.group(1): " ".join(m.group(2).split()).lower()
               for m in _QUERY.finditer(read_text(folder / "query-text.trec"))}
    if not corpus or not queries:
        raise DataError(f"{folder}: no documents or queries parsed")
    return corpus, queries, read_qrels(folder / "qrels")
