"""A base named by Hub id on a machine that cannot reach the Hub: an uncached one fails at once with what to do,
a cached one trains from the cache without the loaders' network retries.

Why: GPU nodes are often offline. Before distill/hub_access.py an uncached base spent ~50 s in "Retrying in 8s"
lines before its error, and a cached one paid the same retries on every file before falling back to the cache.
The Hub endpoint here is a closed loopback port (HF_ENDPOINT), so the test means the same with or without network.
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from distill.manifest import Stage
from distill.student.miniature import write_kept
from tests.conftest import free_port, run_cli
from tests.tiny_models import build_tiny_teacher


def closed_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: connections are refused


def offline_env(cache) -> dict:
    return {"HF_ENDPOINT": closed_endpoint(), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "0",
            "HTTPS_PROXY": "", "https_proxy": "", "ALL_PROXY": "", "all_proxy": ""}


def filtered_run(tmp_path):
    run = tmp_path / "run"
    write_kept(run / "filtered" / "kept", 8)
    Stage("filter", run / "filtered", "test").finish()
    return run


def recipe_with_base(tmp_path, base: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "hub-base", "data": "tiny-arith", "eval": "tiny-arith", "teacher": "tiny-arith",
        "student": {"base": base, "train": {"max_steps": 2, "per_device_train_batch_size": 4, "report_to": "none",
                                            "logging_steps": 1, "max_length": 512, "threads": 1}}}))
    return str(path)


def test_uncached_base_fails_at_once_with_what_to_do(tmp_path):
    run = filtered_run(tmp_path)
    proc = run_cli("student", "train", recipe_with_base(tmp_path, "Qwen/Qwen2.5-Math-1.5B"), "--out", str(run),
                   env=offline_env(tmp_path / "empty-cache"), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Qwen/Qwen2.5-Math-1.5B: model is neither a local folder nor in the Hugging Face cache" in proc.stderr
    assert "cannot be reached" in proc.stderr and "hf download Qwen/Qwen2.5-Math-1.5B" in proc.stderr
    assert "Retrying" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
    assert not (run / "student" / "manifest.json").exists()


def test_cached_base_trains_from_the_cache_without_retries(tmp_path):
    """The base sits in the Hugging Face cache layout (models--org--name/snapshots/REV + refs/main), as
    ``hf download`` leaves it; the Hub is unreachable; training uses the cached files."""
    cache = tmp_path / "hub-cache"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--acme--tiny-base"
    build_tiny_teacher(tmp_path / "built")
    shutil.copytree(tmp_path / "built", repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    run = filtered_run(tmp_path)
    proc = run_cli("student", "train", recipe_with_base(tmp_path, "acme/tiny-base"), "--out", str(run),
                   env=offline_env(cache), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Retrying" not in proc.stderr + proc.stdout
    manifest = yaml.safe_load((run / "student" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["metrics"]["steps"] == 2
    assert manifest["config"]["base"] == "acme/tiny-base"


def test_an_https_proxy_is_trusted_to_reach_the_hub(monkeypatch):
    """Behind a proxy a direct connect to the Hub fails although the Hub is reachable through the proxy."""
    from huggingface_hub import constants

    from distill import hub_access

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # an earlier test in this process may have gone offline
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    hub_access.hub_reachable.cache_clear()
    try:
        assert hub_access.hub_reachable() is True
    finally:
        hub_access.hub_reachable.cache_clear()


@pytest.mark.parametrize("ref", ["not a valid id!!", "a--b/c"])
def test_a_reference_that_is_no_folder_and_no_hub_id_says_so(ref):
    """Such a reference was taken for a Hub id (the cache lookup rejects it, so it counted as cached) and failed in
    the loader with an "(offline: ...)" hint that had nothing to do with it."""
    from distill.errors import DistillError
    from distill.hub_access import loadable_ref

    with pytest.raises(DistillError) as info:
        loadable_ref(ref)
    assert str(info.value).startswith(f"{ref}: neither a local folder nor a Hugging Face repo id (")
    assert "offline" not in str(info.value)
