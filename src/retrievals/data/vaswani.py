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


def vaswani_files(folder: str | os.PathLike) -> Dict[str, Path]:
    """The files :func:`load_vaswani` reads, by role (``corpus``, ``queries``, ``qrels``): one list for the loader
    and for a pipeline that must not write over them."""
    folder = Path(folder)
    return {"corpus": folder / "doc-text.trec", "queries": folder / "query-text.trec", "qrels": folder / "qrels"}


def load_vaswani(folder: str | os.PathLike) -> Tuple[Dict[str, str], Dict[str, str], Dict[str, Dict[str, int]]]:
    """(corpus, queries, qrels); query texts are lowercased (the collection writes them in capitals)."""
    files = vaswani_files(folder)
    for need in files.values():
        if not need.is_file():
            raise DataError(f"{need}: missing (expected the Vaswani collection in TREC format)")
    corpus = {m.group(1): " ".join(m.group(2).split()) for m in _DOC.finditer(read_text(files["corpus"]))}
    queries = {m.group(1): " ".join(m.group(2).split()).lower()
               for m in _QUERY.finditer(read_text(files["queries"]))}
    if not corpus or not queries:
        raise DataError(f"{folder}: no documents or queries parsed")
    return corpus, queries, read_qrels(files["qrels"])
