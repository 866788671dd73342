"""A GGUF file's header read by the builder (engines/llama_cpp/ggml.py read_header, which
skips the tokenizer's arrays instead of materialising them) against ggml-org's own
reader (gguf-py GGUFReader) on files written by gguf-py's GGUFWriter: the same
architecture, vocabulary, tensor types and bytes."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from builder.engines.llama_cpp import ggml
from builder.errors import BuilderError


def write(path: Path, *, per_layer_kv: bool = False, tied: bool = True) -> Path:
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(2)
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_feed_forward_length(160)
    w.add_head_count(4)
    if per_layer_kv:  # some architectures give a value per layer: the first counts
        w.add_head_count_kv([2, 1])
    else:
        w.add_head_count_kv(2)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i}" for i in range(300)] + ["é", ""])
    w.add_token_merges([f"t o{i}" for i in range(50)])
    w.add_token_types([1] * 302)
    w.add_float32("qwen2.rope.freq_base", 1e6)
    w.add_bool("general.flag", True)
    w.add_tensor("token_embd.weight", np.zeros((302, 64), dtype=np.float16))
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((64, 64), dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.zeros((64,), dtype=np.float32))
        # a Q8_0 matrix: 160x64 elements in blocks of 32 (34 bytes each), as raw bytes
        w.add_tensor(f"blk.{i}.ffn_up.weight", np.zeros((160, 2 * 34), dtype=np.uint8),
                     raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    if not tied:
        w.add_tensor("output.weight", np.zeros((302, 64), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def by_gguf_reader(path: Path) -> tuple[dict, list[tuple[str, tuple[int, ...], str, int]]]:
    r = gguf.GGUFReader(str(path))
    kv = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):  # the reader's own: version and counts
            continue
        v = f.contents()
        kv[name] = (len(v), v[0] if v and not isinstance(v[0], str) else None) \
            if isinstance(v, list) else v
    tensors = [(t.name, tuple(int(x) for x in t.shape), t.tensor_type.name, int(t.n_bytes))
               for t in r.tensors]
    return kv, tensors


@pytest.mark.parametrize("per_layer_kv, tied", [(False, True), (True, False)])
def test_the_header_reads_as_ggml_orgs_reader_reads_it(tmp_path: Path, per_layer_kv: bool,
                                                       tied: bool) -> None:
    path = write(tmp_path / "m.gguf", per_layer_kv=per_layer_kv, tied=tied)
    kv, tensors = ggml.read_header(path)
    want_kv, want_tensors = by_gguf_reader(path)
    got_kv = {k: ((v.count, v.first) if isinstance(v, ggml.Array) else v)
              for k, v in kv.items()}
    for k, v in want_kv.items():
        if isinstance(v, float):
            assert got_kv[k] == pytest.approx(v), k
        else:
            assert got_kv[k] == v, k
    assert set(got_kv) == set(want_kv)
    assert [(t.name, t.dims, t.type_name, t.n_bytes) for t in tensors] == want_tensors
    shape = ggml.from_gguf(path)
    assert (shape.arch.n_vocab, shape.arch.n_head_kv, shape.arch.tied_embeddings) == (
        302, 2, tied)
    assert shape.weights == sum(b for *_, b in want_tensors)
    assert shape.quant == ("F32+Q8_0" if tied else "F16+F32+Q8_0")


@pytest.mark.parametrize("damage", ["truncated", "empty", "not gguf", "bad type"])
def test_a_damaged_file_is_one_line(tmp_path: Path, damage: str) -> None:
    path = write(tmp_path / "m.gguf")
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:200], "empty": b"", "not gguf": b"GGML" + data[4:],
                      "bad type": data[:24] + data[24:40] + b"\xff" + data[41:]}[damage])
    with pytest.raises(BuilderError, match=r"m\.gguf: (not a readable GGUF file|GGUF)"):
        ggml.from_gguf(path)


def test_a_tensor_with_more_dimensions_than_ggml_has_is_refused(tmp_path: Path) -> None:
    """A hostile file claiming four billion dimensions is one line, read no further."""
    import struct

    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", 1) + b"t"
                     + struct.pack("<I", 0xFFFFFFFF) + bytes(64))
    with pytest.raises(BuilderError, match=r"m\.gguf: not a readable GGUF file \(tensor 't' "
                       r"has 4294967295 dimensions\)"):
        ggml.from_gguf(path)
