"""Synthetic Qwen2-architecture models: random weights in the exact shape of a catalog
model (or a tiny one), as a Hugging Face directory that llama.cpp's converter takes.

For pipeline tests and for qualifying hardware without downloading weights: the files
have the real model's tensor shapes, so conversion, quantization, file sizes, load
time, memory and decode speed are those of the real model; the answers are noise.

The tokenizer is a SentencePiece BPE trained here on generated text (Qwen's own
151k-token BPE is not redistributable as a package), then grown to the model's full
vocab_size with generated word pieces ("▁" + syllables, each reachable by merges), so
every id the random weights pick is printable text. (Padded to vocab_size with
[PAD] tokens instead, as the converter would, a Qwen2.5-shaped model picks a [PAD] id
nearly every time - 1,024 real pieces in 151,936 - and streams empty strings.)
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from ..cache import Cache, Entry
from ..errors import BuilderError
from .catalog import ModelArch, get_model

TOKENIZER_VOCAB = 1024
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen2.5's ChatML template (tokenizer_config.json of Qwen2.5-*-Instruct, without tools).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# Small enough to decode fast even under emulation, with every Qwen2 feature: GQA,
# q/k/v biases, tied embeddings.
TINY = ModelArch("tiny", hf_repo="", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128,
                 n_vocab=TOKENIZER_VOCAB, tied_embeddings=True, max_context=4096,
                 published_params="")


def shape_for(model: str) -> ModelArch:
    return TINY if model == "tiny" else get_model(model)


SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]


def _corpus(n: int = 4000, seed: int = 0) -> list[str]:
    words = [*"the a model device memory token edge gateway answer question".split(),
             *"paris france capital city river light small fast slow build".split(),
             *"image boot verify serve engine cache profile kernel quantize".split(),
             *"weight layer head value key context hello world yes no".split()]
    rng = random.Random(seed)
    syllables = SYLLABLES
    words += ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3)))
              for _ in range(3000)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 16))) + "."
            for _ in range(n)]


def _word_pieces() -> Iterator[str]:
    """Printable pieces, each the merge of two shorter ones: syllables, then "▁" and one,
    two, three syllables (80 + 80 + 6,400 + 512,000: more than any catalog vocabulary)."""
    yield from SYLLABLES
    for n in (1, 2, 3):
        for word in itertools.product(SYLLABLES, repeat=n):
            yield "\u2581" + "".join(word)


def grow_vocab(proto: bytes, vocab_size: int) -> bytes:
    """A SentencePiece model with word pieces appended up to `vocab_size` ids, scored
    below every trained merge (so text tokenizes as before, then longer words merge)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(proto)
    have = {p.piece for p in m.pieces}
    score = min(p.score for p in m.pieces) - 1
    pieces = _word_pieces()
    while len(m.pieces) < vocab_size:
        piece = next(pieces)
        if piece not in have:
            m.pieces.add(piece=piece, score=score, type=pb.ModelProto.SentencePiece.NORMAL)
            have.add(piece)
            score -= 1
    m.trainer_spec.vocab_size = len(m.pieces)
    return m.SerializeToString()


def train_tokenizer(out: Path, vocab_size: int = TOKENIZER_VOCAB) -> dict[str, int]:
    """SentencePiece BPE with byte fallback, trained on up to TOKENIZER_VOCAB pieces and
    grown to `vocab_size` printable ones; returns the ids of the special tokens."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=buf,
        vocab_size=min(vocab_size, TOKENIZER_VOCAB), model_type="bpe", byte_fallback=True,
        control_symbols=list(SPECIALS), character_coverage=1.0, num_threads=1,
        hard_vocab_limit=False, minloglevel=2, bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1)
    proto = grow_vocab(buf.getvalue(), vocab_size)
    (out / "tokenizer.model").write_bytes(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    return {tok: sp.PieceToId(tok) for tok in SPECIALS}


def write_hf_model(shape: ModelArch, out: Path, *, seed: int = 0) -> None:
    """config.json, tokenizer and model.safetensors with random bf16 weights."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    ids = train_tokenizer(out, shape.n_vocab)
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": shape.n_embd, "intermediate_size": shape.n_ff,
        "num_hidden_layers": shape.n_layer, "num_attention_heads": shape.n_head,
        "num_key_value_heads": shape.n_head_kv, "vocab_size": shape.n_vocab,
        "tie_word_embeddings": shape.tied_embeddings,
        "max_position_embeddings": shape.max_context, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "hidden_act": "silu", "torch_dtype": "bfloat16",
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "use_sliding_window": False, "sliding_window": shape.max_context,
        "max_window_layers": shape.n_layer, "attention_dropout": 0.0,
        "initializer_range": 0.02,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "bos_token": None, "model_max_length": shape.max_context,
    }, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}))

    gen = torch.Generator().manual_seed(seed)
    e, kv = shape.n_embd, shape.n_embd_kv

    def rand(*dims: int) -> torch.Tensor:
        return (torch.randn(*dims, generator=gen) * 0.02).to(torch.bfloat16)

    tensors = {"model.embed_tokens.weight": rand(shape.n_vocab, e),
               "model.norm.weight": torch.ones(e, dtype=torch.bfloat16)}
    for i in range(shape.n_layer):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": torch.ones(e, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(e, dtype=torch.bfloat16),
            p + "self_attn.q_proj.weight": rand(e, e), p + "self_attn.q_proj.bias": rand(e),
            p + "self_attn.k_proj.weight": rand(kv, e), p + "self_attn.k_proj.bias": rand(kv),
            p + "self_attn.v_proj.weight": rand(kv, e), p + "self_attn.v_proj.bias": rand(kv),
            p + "self_attn.o_proj.weight": rand(e, e),
            p + "mlp.gate_proj.weight": rand(shape.n_ff, e),
            p + "mlp.up_proj.weight": rand(shape.n_ff, e),
            p + "mlp.down_proj.weight": rand(e, shape.n_ff),
        })
    if not shape.tied_embeddings:
        tensors["lm_head.weight"] = rand(shape.n_vocab, e)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


# 2: the tokenizer covers the whole vocabulary with printable pieces (1: 1,024 pieces,
# the rest [PAD]: a Qwen2.5-shaped model streamed empty text)
SYNTH_VERSION = 2


def cached(model: str, cache: Cache, *, seed: int = 0) -> Entry:
    """The synthetic model for `model` (catalog id or 'tiny'), from the cache or made now."""
    missing = [m for m in ("torch", "sentencepiece", "safetensors")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise BuilderError(f"synthetic models need {', '.join(missing)}: run "
                           f"`pip install -e '.[convert]'` (scripts/setup does)")
    import sentencepiece
    import torch

    shape = shape_for(model)
    arch = {k: v for k, v in asdict(shape).items()
            if k not in ("id", "hf_repo", "published_params")}
    inputs = {"synth_version": SYNTH_VERSION, "shape": arch, "seed": seed,
              "torch": torch.__version__, "sentencepiece": sentencepiece.__version__}
    return cache.get_or_build("synth", inputs,
                              lambda out, log_file: write_hf_model(shape, out, seed=seed),
                              label=f"synthetic {model}")
