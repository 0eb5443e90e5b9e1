"""Write a Qwen2-architecture checkpoint as a GGUF file (llama.cpp, llama-cpp-python, Ollama, LM Studio).

Why here and not llama.cpp's ``convert_hf_to_gguf.py``: that script ships with a llama.cpp checkout, not with any
pip package, and our exports (and the bundled tiny teacher) are small Qwen2 models whose mapping is fixed. The
``gguf`` package (maintained in llama.cpp) supplies the format, the key names and the tensor-name map; this module
only feeds it: hyper-parameters from ``config.json``, the byte-level BPE vocabulary and merges from
``tokenizer.json`` with llama.cpp's ``qwen2`` pre-tokenizer, the chat template, and the weights in F32 or F16.
Qwen2 uses NeoX-style RoPE (HF's ``rotate_half``), which is what llama.cpp assumes for ``qwen2``: no permutation.
Other architectures get one clear error pointing at llama.cpp's converter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DistillError

SUPPORTED = ("qwen2",)


def _vocab(folder: Path, vocab_size: int) -> tuple[list[str], list[int], list[str], dict[str, int]]:
    """(tokens by id, token types, merges, special ids) from tokenizer.json; ids the tokenizer lacks (padding rows
    of the embedding) become unused placeholders, as llama.cpp's converter does."""
    import gguf

    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise DistillError(f"GGUF export needs a byte-level BPE tokenizer, got {model.get('type')!r}",
                           where=str(folder / "tokenizer.json"))
    by_id: dict[int, tuple[str, int]] = {i: (t, gguf.TokenType.NORMAL) for t, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    tokens, types = [], []
    for i in range(vocab_size):
        token, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(token)
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    names = {t: i for i, (t, _) in by_id.items()}
    return tokens, types, merges, names


def export_gguf(model_dir: str | Path, out_path: str | Path, dtype: str = "f32") -> dict[str, Any]:
    """Convert the Hugging Face folder ``model_dir`` into the single file ``out_path``. Returns a summary."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    folder = Path(model_dir)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise DistillError("no config.json: not a Hugging Face model folder", where=str(folder))
    cfg = json.loads(cfg_path.read_text())
    arch = cfg.get("model_type")
    if arch not in SUPPORTED:
        raise DistillError(f"GGUF export supports {', '.join(SUPPORTED)}, not {arch!r}; use llama.cpp's "
                           "convert_hf_to_gguf.py for it", where=str(cfg_path))
    if dtype not in ("f32", "f16"):
        raise DistillError(f"GGUF dtype must be f32 or f16, got {dtype!r}")
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise DistillError("no .safetensors weights", where=str(folder))

    n_layers = int(cfg["num_hidden_layers"])
    rope = cfg.get("rope_parameters") or {}
    tokens, types, merges, names = _vocab(folder, int(cfg["vocab_size"]))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2])
    writer.add_name(folder.name)
    writer.add_context_length(int(cfg.get("max_position_embeddings", 32768)))
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(int(cfg["num_attention_heads"]))
    writer.add_head_count_kv(int(cfg.get("num_key_value_heads", cfg["num_attention_heads"])))
    writer.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").exists() \
        else {}
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("pad_token", writer.add_pad_token_id)):
        token = tok_cfg.get(key)
        if isinstance(token, dict):
            token = token.get("content")
        if token in names:
            add(names[token])
    writer.add_add_bos_token(False)  # the chat template writes BOS itself
    template = folder / "chat_template.jinja"
    if template.exists():
        writer.add_chat_template(template.read_text(encoding="utf-8"))
    elif tok_cfg.get("chat_template"):
        writer.add_chat_template(tok_cfg["chat_template"])

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, n_layers)
    written = 0
    for shard in shards:
        for hf_name, array in load_file(str(shard)).items():
            if hf_name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
                continue  # llama.cpp reuses token_embd for a tied output layer
            name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise DistillError(f"no GGUF name for tensor {hf_name!r}", where=str(shard))
            array = np.asarray(array, dtype=np.float32)
            # llama.cpp keeps 1-D tensors (norms, biases) in F32 whatever the file type.
            if dtype == "f16" and array.ndim > 1:
                array = array.astype(np.float16)
            writer.add_tensor(name, array)
            written += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_path)
    return {"path": str(out_path), "tensors": written, "vocab": len(tokens), "dtype": dtype,
            "bytes": out_path.stat().st_size}
