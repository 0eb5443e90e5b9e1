"""The vLLM offline engine as a teacher backend (``pip install -e .[gpu]``; GPU nodes only).

The adapter is deliberately thin: :func:`engine_kwargs` maps our typed config onto ``vllm.LLM`` arguments and
:func:`sampling_kwargs` onto ``SamplingParams``; both are plain functions tested on the CPU. Everything else
(batching, scheduling, prefix caching across the n samples of a prompt) is vLLM's job: all prompts of a chunk go
to ``LLM.generate`` in one call, and each prompt's n samples share its KV-cache prefix.

Multi-node R1 (TP=8 x PP=2 over two 8xH100 nodes) uses ``distributed_executor_backend: ray`` with a Ray cluster
started beforehand (``ray start --head`` / ``ray start --address``); see ``teachers/deepseek-r1-2x8xh100.yaml``.
"""

from __future__ import annotations

from typing import Any, Iterator

from ...chat_template import render_prompt
from ...errors import DistillError
from ...records import Generation, Prompt, Sampling
from .base import make_generation


def engine_kwargs(cfg: Any, model: str) -> dict[str, Any]:
    """``cfg`` is a :class:`distill.config.VLLMConfig`. Only settings that differ from vLLM's defaults are passed."""
    kw: dict[str, Any] = {
        "model": model, "tensor_parallel_size": cfg.tensor_parallel_size,
        "pipeline_parallel_size": cfg.pipeline_parallel_size, "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "enable_prefix_caching": cfg.enable_prefix_caching, "dtype": cfg.dtype, "seed": cfg.seed,
        "trust_remote_code": cfg.trust_remote_code,
    }
    if cfg.enable_expert_parallel:
        kw["enable_expert_parallel"] = True
    for name in ("quantization", "kv_cache_dtype", "max_model_len", "max_num_seqs", "distributed_executor_backend"):
        value = getattr(cfg, name)
        if value is not None:
            kw[name] = value
    if cfg.pipeline_parallel_size > 1 and cfg.distributed_executor_backend is None:
        kw["distributed_executor_backend"] = "ray"  # vLLM needs Ray for pipeline parallelism across nodes
    return kw


def engine_prompts(tokenizer: Any, prompts: list[Prompt]) -> list[dict[str, list[int]]]:
    """Each prompt as vLLM token ids (a ``TokensPrompt``): the chat template rendered, then tokenized with no
    special tokens added.

    Why not the rendered text: ``LLM.generate`` tokenizes a text prompt with the tokenizer's special tokens, and
    DeepSeek's R1 tokenizers (R1 and every R1-Distill) prepend their BOS to every text (``add_bos_token``) while
    their chat template writes it too. The teacher then saw ``<BOS><BOS><|User|>...``, a context it was never
    trained on, for every trace and every benchmark sample (vLLM's own chat endpoint tokenizes without special
    tokens; the transformers backend does the same)."""
    return [{"prompt_token_ids": tokenizer.encode(render_prompt(tokenizer, p.problem), add_special_tokens=False)}
            for p in prompts]


def sampling_kwargs(sampling: Sampling) -> dict[str, Any]:
    return {"n": sampling.n, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens, "seed": sampling.seed}


class VLLMBackend:
    """Generates with ``vllm.LLM``; prompts are rendered with the model's own chat template (R1's pre-fills
    ``<think>\\n``), sent as token ids (:func:`engine_prompts`) in chunks so results reach disk while the run goes on."""

    def __init__(self, cfg: Any, model: str, *, name: str | None = None, chunk_size: int = 4096):
        try:
            from vllm import LLM
        except ImportError:
            raise DistillError("the vllm backend needs the gpu extra: pip install -e '.[gpu]'") from None
        self.name = name or model
        self.chunk_size = chunk_size
        self.llm = LLM(**engine_kwargs(cfg, model))
        self.tokenizer = self.llm.get_tokenizer()
        self.stats = {"prompt_tokens": 0, "completion_tokens": 0, "prompts": 0, "samples": 0}

    def generate(self, prompts: list[Prompt], sampling: Sampling) -> Iterator[list[Generation]]:
        from vllm import SamplingParams

        params = SamplingParams(**sampling_kwargs(sampling))
        for start in range(0, len(prompts), self.chunk_size):
            chunk = prompts[start:start + self.chunk_size]
            outputs = self.llm.generate(engine_prompts(self.tokenizer, chunk), params, use_tqdm=False)
            for prompt, out in zip(chunk, outputs):
                n_prompt = len(out.prompt_token_ids or [])
                group = []
                for j, c in enumerate(out.outputs):
                    group.append(make_generation(prompt, j, c.text, c.finish_reason or "stop",
                                                 prompt_tokens=n_prompt, completion_tokens=len(c.token_ids),
                                                 teacher=self.name, sampling=sampling))
                    self.stats["completion_tokens"] += len(c.token_ids)
                self.stats["prompt_tokens"] += n_prompt
                self.stats["prompts"] += 1
                self.stats["samples"] += len(group)
                yield group
