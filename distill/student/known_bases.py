"""The architecture fields of the six R1-Distill bases' ``config.json`` (and of three R1-Distill-Qwen models, as
GKD teachers), so a plan can be made offline.

Why: ``distill student plan`` sizes a recipe's memory before anyone rents GPUs, often on a laptop that has never
downloaded a 70B base, and tests run without the Hub. Only the fields that set the model's shape are kept (copied
from each repository's config.json on the Hub); the real config wins whenever it can be read (a local folder or
the Hugging Face cache). tests/test_student_memory.py checks each entry's parameter count against the size its
model card publishes.
"""

from __future__ import annotations

from typing import Any

_QWEN2 = dict(model_type="qwen2", hidden_act="silu", rms_norm_eps=1e-6)
_QWEN25_MATH = dict(_QWEN2, max_position_embeddings=4096, rope_theta=10000.0)  # 4k native context
_QWEN25_LARGE = dict(_QWEN2, rms_norm_eps=1e-5, hidden_size=5120, num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
                     max_position_embeddings=131072, rope_theta=1000000.0, tie_word_embeddings=False)
_LLAMA3 = dict(model_type="llama", hidden_act="silu", rms_norm_eps=1e-5, attention_bias=False, mlp_bias=False,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192},
               rope_theta=500000.0, max_position_embeddings=131072, vocab_size=128256, tie_word_embeddings=False,
               num_key_value_heads=8)

CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-Math-1.5B": dict(_QWEN25_MATH, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                   num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                                   tie_word_embeddings=True),
    "Qwen/Qwen2.5-Math-7B": dict(_QWEN25_MATH, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                 num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                 tie_word_embeddings=False),
    "meta-llama/Llama-3.1-8B": dict(_LLAMA3, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                    num_attention_heads=32),
    "Qwen/Qwen2.5-14B": dict(_QWEN25_LARGE, intermediate_size=13824, num_hidden_layers=48),
    "Qwen/Qwen2.5-32B": dict(_QWEN25_LARGE, intermediate_size=27648, num_hidden_layers=64),
    "meta-llama/Llama-3.3-70B-Instruct": dict(_LLAMA3, hidden_size=8192, intermediate_size=28672,
                                              num_hidden_layers=80, num_attention_heads=64),
}
# DeepSeek's Qwen students as GKD teachers (students/r1-distill-qwen-1.5b-gkd.yaml): their bases' shapes, the
# tokenizer's specials renamed (same vocabulary), 131,072 positions
CONFIGS.update({
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": dict(CONFIGS["Qwen/Qwen2.5-Math-7B"], max_position_embeddings=131072),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": CONFIGS["Qwen/Qwen2.5-14B"],
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": CONFIGS["Qwen/Qwen2.5-32B"],
})

# the sizes the model cards publish (billions of parameters), for the test of the table above
PUBLISHED_BILLIONS = {"Qwen/Qwen2.5-Math-1.5B": 1.54, "Qwen/Qwen2.5-Math-7B": 7.62, "meta-llama/Llama-3.1-8B": 8.03,
                      "Qwen/Qwen2.5-14B": 14.7, "Qwen/Qwen2.5-32B": 32.5, "meta-llama/Llama-3.3-70B-Instruct": 70.6,
                      "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": 7.62, "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": 14.8,
                      "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": 32.8}


def known_config(ref: str) -> Any | None:
    """A transformers config for one of the bases above, or None."""
    fields = CONFIGS.get(ref)
    if fields is None:
        return None
    from transformers import AutoConfig

    fields = dict(fields)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)
