"""Every YAML in the catalogs validates against its typed config, and the vLLM mapping is what vLLM expects."""

from __future__ import annotations

import pytest

from distill.catalog import list_entries
from distill.config import load_entry, load_recipe
from distill.records import Sampling
from distill.teacher.backends.vllm_backend import engine_kwargs, sampling_kwargs

KIND_FOLDER = {"data": "data", "teacher": "teachers", "student": "students", "eval": "eval"}


@pytest.mark.parametrize("kind", sorted(KIND_FOLDER))
def test_every_catalog_entry_validates(kind):
    names = list_entries(KIND_FOLDER[kind])
    assert names
    for name in names:
        load_entry(kind, name)


@pytest.mark.parametrize("name", list_entries("recipes"))
def test_every_run_recipe_resolves(name):
    assert load_recipe(name).name


def test_r1_on_two_h100_nodes_maps_to_tp8_pp2_over_ray():
    t = load_entry("teacher", "deepseek-r1-2x8xh100")
    kw = engine_kwargs(t.vllm, t.model)
    assert kw["tensor_parallel_size"] == 8 and kw["pipeline_parallel_size"] == 2
    assert kw["distributed_executor_backend"] == "ray" and kw["enable_prefix_caching"] is True
    assert kw["model"] == "deepseek-ai/DeepSeek-R1" and kw["max_model_len"] == 36864


def test_single_node_r1_needs_no_ray_and_passes_only_set_options():
    t = load_entry("teacher", "deepseek-r1-8xh200")
    kw = engine_kwargs(t.vllm, t.model)
    assert kw["tensor_parallel_size"] == 8 and "distributed_executor_backend" not in kw
    assert "quantization" not in kw and "enable_expert_parallel" not in kw


def test_sampling_maps_to_vllm_names():
    assert sampling_kwargs(Sampling(temperature=0.6, top_p=0.95, max_new_tokens=32768, n=4, seed=7)) == {
        "n": 4, "temperature": 0.6, "top_p": 0.95, "max_tokens": 32768, "seed": 7}


def test_api_teacher_prices_default_to_r1_list_prices():
    t = load_entry("teacher", "deepseek-api")
    assert t.http.api_key_env == "DEEPSEEK_API_KEY" and t.http.split_n
    assert (t.http.pricing.input, t.http.pricing.input_cache_hit, t.http.pricing.output) == (0.55, 0.14, 2.19)
