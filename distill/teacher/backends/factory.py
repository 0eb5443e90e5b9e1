"""Builds the backend a teacher recipe asks for. Heavy imports happen only for the backend in use."""

from __future__ import annotations

from typing import Any

from ...config import TeacherConfig
from ...errors import DistillError


def make_backend(cfg: TeacherConfig, model_path: str) -> Any:
    if cfg.backend == "transformers":
        from .transformers_backend import TransformersBackend

        return TransformersBackend(model_path, name=cfg.name, dtype=cfg.dtype, batch_size=cfg.batch_size)
    if cfg.backend == "vllm":
        from .vllm_backend import VLLMBackend

        return VLLMBackend(cfg.vllm, model_path, name=cfg.name)
    if cfg.backend == "openai":
        from .openai_http import OpenAIChatBackend, Pricing

        if cfg.http is None:
            raise DistillError("backend 'openai' needs an 'http' section with base_url", where=f"teacher '{cfg.name}'")
        h = cfg.http
        return OpenAIChatBackend(h.base_url, cfg.model, api_key_env=h.api_key_env, max_in_flight=h.max_in_flight,
                                 timeout_s=h.timeout_s, max_retries=h.max_retries, rpm=h.rpm, tpm=h.tpm,
                                 pricing=Pricing(**h.pricing.model_dump()), split_n=h.split_n, name=cfg.name,
                                 extra_body=h.extra_body)
    raise DistillError(f"unknown backend {cfg.backend!r}", where=f"teacher '{cfg.name}'")


def backend_stats(backend: Any) -> dict[str, Any]:
    stats = getattr(backend, "stats", {})
    return stats.to_dict() if hasattr(stats, "to_dict") else dict(stats)
