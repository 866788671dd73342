"""A tiny Hugging Face checkpoint directory for the Edge-LLM stand-ins (no download): a
Qwen2 model's config.json, generation_config.json, model.safetensors (a real safetensors
header, zero weights), tokenizer.json and tokenizer_config.json with Qwen2.5's ChatML chat
template (its default system prompt included).

    from fakes.edgellm.fake_hf_checkpoint import make_checkpoint
    model = make_checkpoint(tmp / "Qwen2.5-tiny")              # fp16/bf16
    awq = make_checkpoint(tmp / "awq", quant="awq")            # AutoAWQ-style INT4
    gptq = make_checkpoint(tmp / "gptq", quant="gptq")         # GPTQ INT4

The shapes are Qwen2's (tensor names of transformers' Qwen2ForCausalLM), at a toy size; the
tokenizer holds only the three special tokens ids past the base vocabulary, as Qwen's do
(<|endoftext|>, <|im_start|>, <|im_end|>). Nothing here is a usable model.
"""

from __future__ import annotations

import json
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

from .fake_edgellm_runtime import TOOLS

# Qwen2.5-Instruct's template, shortened (no tools branch); \\n is the two characters the
# Jinja source holds, as in the real tokenizer_config.json after JSON decoding.
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'system' and loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + "
    "'\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")


def _checkpoint_helpers():
    spec = spec_from_file_location("fake_edgellm_checkpoint_helpers",
                                   TOOLS / "edgellm_checkpoint.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_checkpoint(dest: Path, *, quant: str | None = None, vocab_size: int = 512,
                    hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    intermediate: int = 128, chat_template: str | None = QWEN25_TEMPLATE,
                    model_type: str = "qwen2") -> Path:
    """DEST as a Qwen2 checkpoint directory; QUANT None, "awq" or "gptq"."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    base = vocab_size - 12  # Qwen keeps a few unused ids above its added tokens
    head_dim = hidden // heads
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": model_type,
              "hidden_size": hidden, "intermediate_size": intermediate,
              "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "vocab_size": vocab_size,
              "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
              "hidden_act": "silu", "tie_word_embeddings": True, "torch_dtype": "bfloat16",
              "bos_token_id": base, "eos_token_id": base + 2}
    tensors = {"model.embed_tokens.weight": ("BF16", [vocab_size, hidden]),
               "model.norm.weight": ("BF16", [hidden])}
    linears = {"self_attn.q_proj": (heads * head_dim, hidden),
               "self_attn.k_proj": (kv_heads * head_dim, hidden),
               "self_attn.v_proj": (kv_heads * head_dim, hidden),
               "self_attn.o_proj": (hidden, heads * head_dim),
               "mlp.gate_proj": (intermediate, hidden), "mlp.up_proj": (intermediate, hidden),
               "mlp.down_proj": (hidden, intermediate)}
    for i in range(layers):
        p = f"model.layers.{i}"
        tensors[f"{p}.input_layernorm.weight"] = ("BF16", [hidden])
        tensors[f"{p}.post_attention_layernorm.weight"] = ("BF16", [hidden])
        for name, (out, inp) in linears.items():
            if quant is None:
                tensors[f"{p}.{name}.weight"] = ("BF16", [out, inp])
            else:  # column-packed int4 (AutoAWQ / GPTQ), group size 32 at this size
                tensors[f"{p}.{name}.qweight"] = ("I32", [inp, out // 8] if quant == "awq"
                                                  else [inp // 8, out])
                tensors[f"{p}.{name}.qzeros"] = ("I32", [inp // 32, out // 8])
                tensors[f"{p}.{name}.scales"] = ("F16", [inp // 32, out])
        for bias in ("q_proj", "k_proj", "v_proj"):
            tensors[f"{p}.self_attn.{bias}.bias"] = ("BF16", [linears[f"self_attn.{bias}"][0]])
    if quant == "awq":
        config["quantization_config"] = {"bits": 4, "group_size": 32, "quant_method": "awq",
                                         "version": "gemm", "zero_point": True}
    elif quant == "gptq":
        config["quantization_config"] = {"bits": 4, "group_size": 32, "quant_method": "gptq",
                                         "desc_act": False, "sym": True}
    elif quant is not None:
        raise ValueError(f"quant must be None, 'awq' or 'gptq', not {quant!r}")
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    (dest / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": base, "eos_token_id": [base + 2, base], "do_sample": True}, indent=2))
    _checkpoint_helpers().write_safetensors(dest / "model.safetensors", tensors,
                                            {"format": "pt"})
    tokenizer = {"version": "1.0",
                 "added_tokens": [{"id": base + i, "content": t, "single_word": False,
                                   "lstrip": False, "rstrip": False, "normalized": False,
                                   "special": True} for i, t in enumerate(specials)],
                 "normalizer": {"type": "NFC"},
                 "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
                 "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}
    (dest / "tokenizer.json").write_text(json.dumps(tokenizer, indent=2))
    tok_config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
                  "model_max_length": 131072, "tokenizer_class": "Qwen2Tokenizer"}
    if chat_template is not None:
        tok_config["chat_template"] = chat_template
    (dest / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    return dest
