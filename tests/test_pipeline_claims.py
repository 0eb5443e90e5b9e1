"""A rerun in an old run folder with a changed recipe is refused before the first stage runs, not after minutes of
generation and training when the pipeline reaches the stage whose folder the old recipe claimed."""

from __future__ import annotations

import json

import pytest

from distill.config import load_recipe
from distill.errors import DistillError
from distill.manifest import Stage
from distill.pipeline import run_pipeline
from tests.conftest import run_cli

# The demo recipe cut down to seconds a stage, should a stage run at all.
TINY = ["data.train_size=8", "data.heldout_size=4", "teacher.sampling.n=1", "student.train.max_steps=2",
        "eval.benchmarks.0.limit=2", "eval.benchmarks.0.k=1"]


def other_recipe(*overrides: str):
    return load_recipe("tiny", TINY + list(overrides))


def claim_eval(run) -> None:
    """Leave RUN/eval claimed (its stage.json marker) by a recipe with another eval limit, as a killed or refused
    run of that recipe would: the eval stage's fingerprint covers the whole recipe."""
    other = other_recipe("eval.benchmarks.0.limit=3")
    Stage("eval", run / "eval", other.fingerprint(), other.eval.model_dump()).begin()


def test_changed_recipe_is_refused_before_any_stage_runs(tmp_path):
    run = tmp_path / "run"
    claim_eval(run)
    with pytest.raises(DistillError, match=r"holds output of stage 'eval' made with a different config "
                                           r"\(benchmarks.0.limit: 3 -> 2\); use a new "
                                           r"--out or --force$") as err:
        run_pipeline(load_recipe("tiny", TINY), run)
    assert err.value.where == str(run / "eval")
    assert sorted(p.name for p in run.iterdir()) == ["eval"], "no earlier stage may have run"


def test_cli_refuses_at_once_with_exit_2(tmp_path):
    run = tmp_path / "run"
    claim_eval(run)
    proc = run_cli("run", "tiny", "--out", str(run), *[a for o in TINY for a in ("--set", o)])
    assert proc.returncode == 2, proc.stderr
    assert f"{run / 'eval'}: holds output of stage 'eval' made with a different config" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in run.iterdir()) == ["eval"], "no earlier stage may have run"


def test_only_the_stages_that_run_are_checked_and_force_is_not_refused(tmp_path):
    """``only=`` checks just those stages; ``--force`` redoes a claimed stage (begin wipes its folder)."""
    run = tmp_path / "run"
    recipe = load_recipe("tiny", TINY)
    claim_eval(run)
    other = other_recipe("data.train_size=9")
    Stage("prompts", run / "prompts", other.fingerprint("data"), other.data.model_dump()).begin()
    with pytest.raises(DistillError, match=r"stage 'prompts' made with a different config \(train_size: 9 -> 8\)"):
        run_pipeline(recipe, run, only=["prompts"])
    run_pipeline(recipe, run, only=["prompts"], force=True)
    manifest = json.loads((run / "prompts" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["train"] == 8
    assert manifest["fingerprint"] == recipe.fingerprint("data")


def test_stage_complete_for_this_recipe_passes(tmp_path):
    """A finished stage is reused, never refused: the check lets through exactly what the stage function would
    skip, even when its stage.json no longer matches (only a complete, matching manifest.json counts)."""
    run = tmp_path / "run"
    recipe = load_recipe("tiny", TINY)
    run_pipeline(recipe, run, only=["prompts"])
    done = (run / "prompts" / "manifest.json").stat().st_mtime_ns
    assert run_pipeline(recipe, run, only=["prompts"])["stages"]["prompts"] >= 0
    marker = run / "prompts" / "stage.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "fingerprint": "someone-else"}))
    run_pipeline(recipe, run, only=["prompts"])
    assert (run / "prompts" / "manifest.json").stat().st_mtime_ns == done, "the stage must have been reused"
