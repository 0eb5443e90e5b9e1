"""The CLI end to end on a small slice: every stage runs for real, the report and the export are complete, and a
rerun skips the finished stages."""

from __future__ import annotations

import json
import time

import pytest

from distill.records import ShardedJsonlStore
from tests.conftest import SMALL_RUN, run_cli


def test_report_has_every_figure(small_run):
    report = json.loads((small_run / "report.json").read_text())
    for label in ("teacher", "student_untrained", "student", "student_quantized", "student_unfiltered"):
        assert 0 <= report[label]["pass@1"] <= 100, label
    f = report["filter"]
    assert f["generated"] == 96 * 2
    assert f["kept"] + sum(f["rejected"].values()) == f["generated"]
    assert f["rejected"], "the tiny teacher is sometimes wrong, so something must be rejected"
    assert set(report["stages"]) == {"prompts", "generate", "filter", "train", "train_unfiltered", "quantize", "eval",
                                     "export"}
    assert (small_run / "report.png").stat().st_size > 1000


def test_unfiltered_ablation_trains_on_every_renderable_trace(small_run):
    """compare_unfiltered: the second student saw the traces the filter rejected too, with the same settings."""
    kept = json.loads((small_run / "filtered" / "manifest.json").read_text())["counts"]["kept"]
    m = json.loads((small_run / "student-unfiltered" / "manifest.json").read_text())
    traces = list(ShardedJsonlStore(small_run / "student-unfiltered" / "traces"))
    assert m["counts"]["traces"] == len(traces) > kept
    assert m["counts"]["traces"] + m["counts"]["unrenderable_skipped"] == 96 * 2
    wrong = {r["id"] for r in ShardedJsonlStore(small_run / "filtered" / "rejected")
             if r["reject_reason"] == "wrong_answer"}
    assert wrong and wrong <= {t["id"] for t in traces}, "wrong answers must be in the unfiltered data"
    main = json.loads((small_run / "student" / "manifest.json").read_text())
    assert m["config"] == main["config"]
    assert (small_run / "student-unfiltered" / "model" / "model.safetensors").exists()
    report = json.loads((small_run / "report.json").read_text())
    assert "student_unfiltered" in report and report["student_unfiltered"]["pass@1"] >= 0


def test_every_rejection_keeps_its_reason(small_run):
    rejected = list(ShardedJsonlStore(small_run / "filtered" / "rejected"))
    assert rejected and all(r["reject_reason"] and not r["kept"] for r in rejected)
    for r in rejected:
        failed = [c for c in r["checks"].values() if not c["passed"]]
        assert failed[0]["reason"] == r["reject_reason"]


def test_manifests_record_config_versions_and_counts(small_run):
    m = json.loads((small_run / "generations" / "manifest.json").read_text())
    assert m["status"] == "complete" and m["config"]["sampling"]["n"] == 2
    assert m["versions"]["transformers"] and m["versions"]["torch"]
    assert m["counts"]["samples_total"] == 192 and m["tokens"]["completion_tokens"] > 0


def test_export_folder_is_hub_ready(small_run):
    report = json.loads((small_run / "report.json").read_text())
    export = small_run / "export" / "tiny-arith-student"
    assert report["export_dir"] == str(export)
    names = {p.name for p in export.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= names
    gen = json.loads((export / "generation_config.json").read_text())
    assert gen["temperature"] == 0.6 and gen["top_p"] == 0.95 and gen["do_sample"] is True
    card = (export / "README.md").read_text()
    assert "license: apache-2.0" in card and "pass@1" in card and str(report["student"]["pass@1"]) in card
    assert "<think>" in card or "think" in card
    tok = json.loads((export / "tokenizer_config.json").read_text())
    assert "chat_template" in tok or (export / "chat_template.jinja").exists()


def test_quantized_student_is_int8_and_loads(small_run):
    from transformers import AutoModelForCausalLM

    qdir = small_run / "export" / "tiny-arith-student-bnb-int8"
    cfg = json.loads((qdir / "config.json").read_text())
    assert cfg["quantization_config"]["load_in_8bit"] is True
    model = AutoModelForCausalLM.from_pretrained(qdir, device_map="cpu")
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "Linear8bitLt"
    full = (small_run / "export" / "tiny-arith-student" / "model.safetensors").stat().st_size
    assert (qdir / "model.safetensors").stat().st_size < full


def test_push_dry_run_on_export(small_run):
    proc = run_cli("export", "push", str(small_run / "export" / "tiny-arith-student"), "--repo-id", "me/tiny",
                   "--dry-run", env={"HF_TOKEN": "hf_DONOTLEAK_1234567890"})
    assert proc.returncode == 0 and "README.md" in proc.stdout and "model.safetensors" in proc.stdout
    assert "hf_DONOTLEAK" not in proc.stdout + proc.stderr


def test_rerun_skips_complete_stages(small_run):
    start = time.time()
    proc = run_cli("run", "tiny", "--out", str(small_run), *SMALL_RUN)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("already complete, skipped") == 8  # every stage, the unfiltered ablation too
    assert time.time() - start < 60


def test_changed_recipe_refuses_to_mix_outputs(small_run):
    proc = run_cli("teacher", "generate", "tiny", "--out", str(small_run), *SMALL_RUN,
                   "--set", "teacher.sampling.temperature=0.7")
    assert proc.returncode == 2 and "different config" in proc.stderr
    assert "temperature: 0.6 -> 0.7" in proc.stderr  # what changed, not two fingerprints


def test_saved_student_tokenizer_is_the_one_it_trained_with(small_run):
    """Reloading the exported student must give back the training tokenizer: same vocabulary (no token added by a
    conversion on save), same ids for real training text. A silent change here cost the demo student 30 points of
    pass@1 once (an extra unk row and a converted pipeline)."""
    from transformers import AutoTokenizer

    from distill.chat_template import render_training_pair
    from tests.conftest import TINY_TEACHER

    teacher = AutoTokenizer.from_pretrained(TINY_TEACHER)
    student = AutoTokenizer.from_pretrained(small_run / "student" / "model")
    assert len(student) == len(teacher)
    assert type(student).__name__ == type(teacher).__name__
    kept = list(ShardedJsonlStore(small_run / "filtered" / "kept"))[:50]
    for rec in kept:
        prompt, completion = render_training_pair(teacher, rec["problem"], rec["reasoning"], rec["answer"])
        for text in (prompt, completion, prompt + completion):
            assert student(text, add_special_tokens=False)["input_ids"] == \
                teacher(text, add_special_tokens=False)["input_ids"]


def test_a_rerun_of_the_unfiltered_ablation_after_a_crash_trains_on_one_copy_of_the_traces(small_run, tmp_path,
                                                                                          monkeypatch):
    """The ablation copies the generations into its own trace store before training. A crash in training, then a
    rerun, appended every generation a second time: the resumed student trained on doubled data."""
    import shutil

    import distill.student.train as train_module
    from distill.config import load_recipe
    from distill.pipeline import stage_train_unfiltered

    run = tmp_path / "run"
    shutil.copytree(small_run / "generations", run / "generations")
    recipe = load_recipe("tiny", [a for a in SMALL_RUN if a != "--set"])
    seen = []

    def crash(model, tokenizer, cfg, kept, *args, **kwargs):  # the crash, injected where training would start
        seen.append(len(kept.records))
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train_student", crash)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            stage_train_unfiltered(recipe, run)
    usable = sum(1 for g in ShardedJsonlStore(run / "generations") if g["reasoning"].strip() and g["answer"].strip())
    assert len(list(ShardedJsonlStore(run / "student-unfiltered" / "traces"))) == usable
    assert seen == [usable, usable]
    assert not (run / "student-unfiltered" / "traces.partial").exists()
