"""Bad input to the student stage (a broken base or GKD teacher folder, a malformed kept record, a checkpoint that
cannot resume, an unusable --out, a LoRA target the model lacks) is one clear error naming the folder, file:line or
recipe key, and a non-zero exit: never a traceback or the CLI's catch-all ``internal error``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from distill.config import StudentConfig
from distill.errors import DistillError
from distill.student.miniature import TINY_INIT, tiny_student, write_kept
from tests.conftest import ROOT, filtered_run, run_cli
from tests.tiny_models import build_tiny_teacher


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return build_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny")


def broken_copy(teacher: Path, folder: Path, kind: str) -> Path:
    """A copy of the tiny model folder with one thing wrong with it."""
    if kind == "empty":
        folder.mkdir()
        return folder
    shutil.copytree(teacher, folder)
    weights = folder / "model.safetensors"
    if kind == "no config.json":
        (folder / "config.json").unlink()
    elif kind == "config not JSON":
        (folder / "config.json").write_text('{"model_type": "qwen2", ')
    elif kind == "weights cut short":
        weights.write_bytes(weights.read_bytes()[:4])
    elif kind == "weights cut in half":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "no weights":
        weights.unlink()
    return folder


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


BASE_CASES = {  # what is wrong -> what the error says
    "empty": "cannot load tokenizer: the folder is empty",
    "no config.json": "cannot load the base model's config: no config.json in the folder",
    "config not JSON": "cannot load tokenizer: config.json is not valid JSON",
    "weights cut short": "cannot load the base model: model.safetensors is corrupt or cut short",
    "weights cut in half": "cannot load the base model: model.safetensors is corrupt or cut short",
    "no weights": "cannot load the base model: no weights in the folder",
}


@pytest.mark.parametrize("kind", list(BASE_CASES))
def test_a_broken_base_folder_is_one_line_naming_it(teacher, tmp_path, kind):
    """Before: an empty folder was a 5-line ValueError naming no folder, one without config.json "Unrecognized
    model", a cut weights file a SafetensorError, all as internal errors; a local folder without weights was told
    "(offline: only local folders and cached models load)", which is about Hub ids."""
    from distill.student.model import build_student

    base = broken_copy(teacher, tmp_path / "base", kind)
    with pytest.raises(DistillError) as exc:
        build_student(StudentConfig(name="s", base=str(base), train={"threads": 1}), str(teacher))
    text = one_line(exc)
    assert text.startswith(f"{base}: {BASE_CASES[kind]}"), text
    assert "offline" not in text


def test_the_offline_hint_is_only_for_hub_ids(tmp_path, monkeypatch):
    import distill.hub_access
    from distill.student.model import load_failure

    monkeypatch.setattr(distill.hub_access, "hub_reachable", lambda: False)
    hub = load_failure(OSError("no file named model.safetensors\nmore"), "org/model", "the base model", "weights")
    assert str(hub) == ("org/model: cannot load the base model: no file named model.safetensors (offline: only local "
                        "folders and cached models load)")
    (tmp_path / "config.json").write_text("{}")
    local = load_failure(OSError("no file named model.safetensors"), str(tmp_path), "the base model", "weights")
    assert str(local) == f"{tmp_path}: cannot load the base model: no weights in the folder (model.safetensors or " \
                         "pytorch_model.bin)"


@pytest.mark.parametrize("kind", ["empty", "weights cut short", "no weights"])
def test_a_broken_gkd_teacher_folder_is_one_line_naming_it(teacher, tmp_path, kind):
    from distill.student.gkd import load_teacher
    from distill.student.model import load_tokenizer

    folder = broken_copy(teacher, tmp_path / "gkd-teacher", kind)
    with pytest.raises(DistillError) as exc:
        load_tokenizer(str(folder), "the GKD teacher's tokenizer")
        load_teacher(str(folder))
    text = one_line(exc)
    assert text.startswith(f"{folder}: cannot load the GKD teacher"), text
    assert "offline" not in text


@pytest.mark.parametrize("kind,says", [("no config.json", "no config.json in the folder"),
                                       ("config not JSON", "config.json is not valid JSON")])
def test_student_plan_on_a_base_without_a_readable_config(teacher, tmp_path, kind, says):
    """``distill student plan`` reads only the config (memory.model_config); before: an internal OSError or
    JSONDecodeError."""
    base = broken_copy(teacher, tmp_path / "base", kind)
    student = tmp_path / "student.yaml"
    student.write_text(f"base: {base}\ntrain: {{max_length: 64}}\n")
    proc = run_cli("student", "plan", str(student))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {base}: cannot load the base model's config: {says}"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "internal error" not in proc.stderr


@pytest.mark.parametrize("value,got", [(7, "int"), (["a"], "list"), ({"a": 1}, "dict"), (None, "null"),
                                       ("", "an empty string"), (" \n ", "only whitespace"), ("missing", "missing")])
def test_a_kept_record_with_a_bad_field_names_file_and_line(tmp_path, value, got):
    """Before: an int/list/dict was ``AttributeError: 'int' object has no attribute 'strip'`` (an internal
    error), a missing field "RUN/filtered/kept: record None lacks reasoning" (the folder, not the file and line);
    a field of whitespace alone trained silently (stripped by the template: an empty think block, no answer)."""
    from distill.student.train import kept_records

    kept = write_kept(tmp_path / "kept", 3)
    shard = kept / "shard-00000.jsonl"
    rows = [json.loads(line) for line in shard.read_text().splitlines()]
    if value == "missing":
        del rows[1]["reasoning"]
        field = "reasoning"
    else:
        rows[1]["problem"] = value
        field = "problem"
    shard.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DistillError, match=rf"^{shard}:2: field '{field}' must be a non-empty string \(got {got}\)$"):
        kept_records(kept)


def test_training_on_a_kept_record_with_a_number_is_one_error(teacher, tmp_path):
    """The same through train_student (the trainer never starts)."""
    from distill.student.model import build_student
    from distill.student.train import train_student

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "shard-00000.jsonl").write_text(json.dumps({"id": "a", "problem": "1+1", "reasoning": 2,
                                                        "answer": "2"}) + "\n")
    cfg = tiny_student(max_steps=1)
    model, tok = build_student(cfg, str(teacher))
    with pytest.raises(DistillError, match=r"shard-00000\.jsonl:1: field 'reasoning' must be a non-empty string "
                                           r"\(got int\)"):
        train_student(model, tok, cfg, kept, tmp_path / "out")


def test_a_kept_folder_without_shards_says_what_it_reads(tmp_path):
    """A store is its shard-*.jsonl files: traces written as kept/data.jsonl were "no kept traces to train on",
    which the folder plainly holds."""
    from distill.student.train import kept_records

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "data.jsonl").write_text(json.dumps({"problem": "1+1", "reasoning": "1+1=2", "answer": "2"}) + "\n")
    with pytest.raises(DistillError, match=rf"^{kept}: no kept traces to train on \(no shard-\*\.jsonl files in the "
                                           r"folder\)$"):
        kept_records(kept)
    (kept / "shard-00000.jsonl").write_text("\n")
    with pytest.raises(DistillError, match=rf"^{kept}: no kept traces to train on$"):
        kept_records(kept)


@pytest.mark.parametrize("requested,hint", [("flash_attention_2", "pip install the 'gpu' extra"),
                                           ("flash_attention_3", "built from the hopper/ folder")])
def test_a_missing_flash_attention_falls_back_with_the_right_install_hint(requested, hint):
    """The fallback's hint named the 'gpu' extra for flash_attention_3 too, which installs flash-attn 2 only: the
    user installs it, and the recipe still falls back."""
    from distill.student.efficiency import resolve_attn_implementation

    with pytest.warns(RuntimeWarning) as caught:
        assert resolve_attn_implementation(requested, cuda=True, have=[]) == "sdpa"
    assert len(caught) == 1 and hint in str(caught[0].message), str(caught[0].message)


MARKED = {  # field -> text holding a chat-format marker, as a teacher decoded with its special tokens gives it
    "answer": "The answer is \\boxed{7}. <｜User｜> What is 2 + 2?",
    "reasoning": "3 + 4 = 7.<｜end▁of▁sentence｜> So 7.",
}


def test_a_trace_holding_a_chat_marker_is_left_out_and_counted(teacher, tmp_path, capsys):
    """The rendered text is tokenized with R1's markers as control tokens, so a trace holding one as text trained
    on it: an EOS in the reasoning taught the student to stop mid-thought, a ``<｜User｜>`` after the answer to
    open a new turn. Such traces are left out, like overlong ones: counted in the metrics, the first named by file
    and line. The think tags in a problem are only prompt text and stay."""
    from distill.student.model import build_student
    from distill.student.train import kept_records, train_student

    kept = write_kept(tmp_path / "kept", 5)
    shard = kept / "shard-00000.jsonl"
    rows = [json.loads(line) for line in shard.read_text().splitlines()]
    rows[1]["answer"], rows[3]["reasoning"] = MARKED["answer"], MARKED["reasoning"]
    rows[4]["problem"] = "What do <think> and </think> mark? " + rows[4]["problem"]
    shard.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    assert len(kept_records(kept)) == 5  # without left_out nothing is screened

    cfg = tiny_student(max_steps=1)
    model, tok = build_student(cfg, str(teacher))
    metrics = train_student(model, tok, cfg, kept, tmp_path / "out")
    assert metrics["examples"] == 3 and metrics["marker_dropped"] == 2
    err = capsys.readouterr().err
    assert "2 of 5 traces hold a chat-format marker as text and are left out" in err
    assert f"first: {shard}:2: its answer holds '<｜User｜>'" in err

    shard.write_text("".join(json.dumps({**r, "reasoning": MARKED["reasoning"]}, ensure_ascii=False) + "\n"
                             for r in rows))
    with pytest.raises(DistillError, match=rf"^{kept}: every one of the 5 kept traces holds a chat-format marker as "
                                           rf"text, e\.g\. {shard}:1: its reasoning holds '<｜end▁of▁sentence｜>'$"):
        kept_records(kept, [])


def test_a_trace_holding_the_student_tokenizers_own_control_token_is_left_out_and_counted(teacher, tmp_path, capsys):
    """A base's own control tokens (a Qwen2.5 base's ``<|im_end|>`` and ``<|endoftext|>``) are tokenized as such
    from text too, and read_kept, which runs before the student's tokenizer exists, screens only R1's markers:
    such traces trained on the token mid-trace. They are left out once the tokenizer is known, named by file and
    line, and counted with the markers' in ``marker_dropped``."""
    from distill.student.model import build_student
    from distill.student.train import read_kept, train_student

    kept = write_kept(tmp_path / "kept", 6)
    shard = kept / "shard-00000.jsonl"
    rows = [json.loads(line) for line in shard.read_text().splitlines()]
    rows[2]["reasoning"] = rows[2]["reasoning"] + " <|im_end|>\n<|im_start|>user\nmore"
    rows[4]["answer"] = "<|end|> is not a token here, <|endoftext|> is"
    rows[5]["answer"] = MARKED["answer"]  # an R1 marker: left out by read_kept already
    shard.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    cfg = tiny_student(max_steps=1)
    model, tok = build_student(cfg, str(teacher))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]})
    assert len(read_kept(kept).records) == 5
    metrics = train_student(model, tok, cfg, kept, tmp_path / "out")
    assert metrics["examples"] == 3 and metrics["marker_dropped"] == 3
    err = " ".join(capsys.readouterr().err.split())
    assert "2 of 5 traces hold one of the student tokenizer's own control tokens as text and are left out" in err
    assert f"first: {shard}:3: its reasoning holds '<|im_end|>'" in err


@pytest.mark.parametrize("text,found", [
    ("plain <| text <|im_start", None),
    ("a <|im_start|> b", "<|im_start|>"),
    ("<|im_end|>", "<|im_end|>"),
    ("x <|eot|> then <|eot_id|>", "<|eot_id|>"),
    ("[PAD] only", "[PAD]"),
])
def test_token_in_text_finds_any_of_many_tokens(text, found):
    from distill.chat_template import token_in_text

    tokens = ["<|im_start|>", "<|im_end|>", "<|eot_id|>", "[PAD]"] + [f"<|reserved_{i}|>" for i in range(250)]
    assert token_in_text(text, tokens) == found


# --- resuming ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_step_run(teacher, tmp_path_factory) -> tuple[Path, Path]:
    """A finished one-step run with its checkpoint-1 (save_steps 1), and its kept store."""
    from distill.student.model import build_student
    from distill.student.train import train_student

    warnings.simplefilter("ignore")
    tmp = tmp_path_factory.mktemp("resume")
    kept = write_kept(tmp / "kept", 4)
    cfg = tiny_student(max_steps=1, save_steps=1, per_device_train_batch_size=2)
    model, tok = build_student(cfg, str(teacher))
    train_student(model, tok, cfg, kept, tmp / "out")
    assert (tmp / "out" / "checkpoints" / "checkpoint-1" / "optimizer.pt").exists()
    return tmp / "out", kept


def _cut(name):
    def cut(checkpoint: Path) -> None:
        data = (checkpoint / name).read_bytes()
        (checkpoint / name).write_bytes(data[: len(data) // 2])
    return cut


def _removed(name):
    return lambda checkpoint: (checkpoint / name).unlink()


def _only_the_state(checkpoint: Path) -> None:
    for p in checkpoint.iterdir():
        if p.name != "trainer_state.json":
            p.unlink()


RESUME_CASES = {  # how the checkpoint is broken, the student resuming it, what the error says
    "weights cut in half": (_cut("model.safetensors"), TINY_INIT, "its weights did not load"),
    "optimizer cut in half": (_cut("optimizer.pt"), TINY_INIT, "its optimizer or scheduler state did not load"),
    "only trainer_state.json": (_only_the_state, TINY_INIT, "it has no optimizer.pt, so the run would go on with a "
                                "fresh optimizer"),
    "no optimizer.pt": (_removed("optimizer.pt"), TINY_INIT, "it has no optimizer.pt, so the run would go on with a "
                        "fresh optimizer .Adam's moments lost. and its learning-rate schedule started over"),
    "no scheduler.pt": (_removed("scheduler.pt"), TINY_INIT, "it has no scheduler.pt, so the run would go on"),
    "weights removed": (_removed("model.safetensors"), TINY_INIT, "its weights did not load .Can't find a valid "
                        "checkpoint"),
    "another model's shape": (lambda checkpoint: None, {**TINY_INIT, "hidden_size": 64},
                              "its weights did not load .Error.s. in loading state_dict for Qwen2ForCausalLM: size "
                              "mismatch for"),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_a_checkpoint_that_cannot_resume_is_one_error_naming_it(teacher, one_step_run, tmp_path, case):
    """Before: SafetensorError / UnpicklingError / ValueError as internal errors, and for checkpoints copied from a
    run of another shape a many-line size-mismatch RuntimeError; none said which folder to remove."""
    from distill.student.model import build_student
    from distill.student.train import train_student

    done, kept = one_step_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    checkpoint = out / "checkpoints" / "checkpoint-1"
    mutate, init, says = RESUME_CASES[case]
    mutate(checkpoint)
    cfg = tiny_student(max_steps=2, save_steps=1, per_device_train_batch_size=2).model_copy(
        update={"init_config": dict(init)})
    model, tok = build_student(cfg, str(teacher))
    with pytest.raises(DistillError) as exc:
        train_student(model, tok, cfg, kept, out)
    text = one_line(exc)
    assert text.startswith(f"{checkpoint}: cannot resume from this checkpoint: "), text
    assert re.search(says, text), text
    assert text.endswith("delete this checkpoint folder to resume from an earlier one (or from the start), or "
                         "rerun with --force to start over"), text


def test_an_unparsable_trainer_state_is_called_that(one_step_run, tmp_path, capsys):
    """Before: "checkpoint-2 was not finished (no trainer_state.json)" although the file was there, cut short."""
    from distill.student.train import last_checkpoint

    out = tmp_path / "out"
    shutil.copytree(one_step_run[0], out)
    torn = out / "checkpoints" / "checkpoint-2"
    shutil.copytree(out / "checkpoints" / "checkpoint-1", torn)
    (torn / "trainer_state.json").write_text('{"global_step": 2, ')
    assert last_checkpoint(out) == str(out / "checkpoints" / "checkpoint-1")
    err = capsys.readouterr().err
    assert "checkpoint-2 was not finished (its trainer_state.json is cut short or not valid JSON)" in err, err
    assert not torn.exists()


# --- the run folder, the launcher -----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [("student", "train", "tiny"), ("teacher", "import", "s1k", "traces.jsonl")],
                         ids=["student-train", "teacher-import"])
def test_out_that_is_a_file_names_out(tmp_path, command):
    """Before: ``internal error FileExistsError``."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    proc = run_cli(*command, "--out", str(afile))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: --out {afile}: is a file, not a folder: --out names the run folder " \
                                  "(created if missing)", proc.stderr


def test_out_under_a_file_names_out_and_the_file(tmp_path):
    """Before: NotADirectoryError / FileNotFoundError / PermissionError from inside the first stage."""
    from distill.pipeline import make_run_folder

    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    with pytest.raises(DistillError, match=rf"^--out {afile}/run: cannot create or write the run folder: .*"
                                           rf"\({afile} is a file\)$"):
        make_run_folder(afile / "run")
    assert make_run_folder(tmp_path / "new" / "run").is_dir()
    assert list((tmp_path / "new" / "run").iterdir()) == []  # the write check leaves nothing behind


def test_the_launcher_prints_one_line_for_an_unexpected_error(tmp_path, monkeypatch, capsys):
    """``python -m distill.student.launch`` runs on every rank; it caught only DistillError, so any other error
    printed a full traceback on every rank. Now: one ``error: internal error`` line, exit 1; DISTILL_DEBUG=1 keeps
    the traceback."""
    import distill.config
    from distill.student import launch

    def boom(*args, **kwargs):
        raise RuntimeError("something broke\nsecond line of the message")

    monkeypatch.setattr(distill.config, "load_recipe", boom)
    monkeypatch.delenv("DISTILL_DEBUG", raising=False)
    assert launch.main(["tiny", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err == ("error: internal error RuntimeError: something broke (rerun with DISTILL_DEBUG=1 for the "
                   "traceback)\n"), err
    monkeypatch.setenv("DISTILL_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something broke"):
        launch.main(["tiny", "--out", str(tmp_path / "run")])


def test_the_launcher_sets_the_clis_library_defaults():
    """Progress bars off etc., as ``distill`` sets them at import, before any library loads."""
    code = ("import os, sys; before = dict(os.environ); import {module}; "
            "print(sorted((k, v) for k, v in os.environ.items() if before.get(k) != v))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "TOKENIZERS_"))}
    env["PYTHONPATH"] = str(ROOT)
    set_by = {}
    for module in ("distill.cli", "distill.student.launch"):
        proc = subprocess.run([sys.executable, "-c", code.format(module=module)], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=120)
        assert proc.returncode == 0, proc.stderr
        set_by[module] = proc.stdout.strip()
    assert set_by["distill.cli"] == set_by["distill.student.launch"]
    assert "HF_DATASETS_DISABLE_PROGRESS_BARS" in set_by["distill.student.launch"]


def test_the_launcher_reports_a_broken_base_as_one_line(teacher, tmp_path, capsys):
    from distill.student import launch

    run = filtered_run(tmp_path / "run")
    base = broken_copy(teacher, tmp_path / "base", "weights cut short")
    rc = launch.main(["tiny", "--out", str(run), "--set", f"student.base={base}", "--set",
                      "student.init_config=null"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {base}: cannot load the base model: model.safetensors is corrupt"), err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("entry", ["stage", "launcher"])
def test_a_bad_kept_record_is_refused_before_the_student_is_built(tmp_path, capsys, entry):
    """The train stage and the training launcher read and check the traces first: a malformed record was reported
    only after the student was built and RUN/student/init written (minutes of loading for a 70B)."""
    from distill.config import load_recipe
    from distill.pipeline import stage_train
    from distill.student import launch

    run = filtered_run(tmp_path / "run")
    shard = run / "filtered" / "kept" / "shard-00000.jsonl"
    lines = shard.read_text().splitlines()
    shard.write_text("\n".join(lines[:2] + ['{"problem": "1+1", "reasoning": "  ", "answer": "2"}'] + lines[2:]) + "\n")
    says = f"{shard}:3: field 'reasoning' must be a non-empty string (got only whitespace)"
    if entry == "stage":
        with pytest.raises(DistillError, match=re.escape(says)):
            stage_train(load_recipe("tiny", []), run)
    else:
        assert launch.main(["tiny", "--out", str(run)]) == 2
        assert capsys.readouterr().err == f"error: {says}\n"
    assert not (run / "student" / "init").exists()


# --- LoRA targets, the GKD teacher ---------------------------------------------------------------------------------

def test_a_lora_target_the_model_lacks_names_the_key_and_the_modules_it_has(teacher, tmp_path):
    """Before: PEFT's NoMatchingPeftModuleError once the trainer wrapped the model (an internal error); a list
    where only some names matched was taken silently."""
    from distill.student.model import build_student
    from distill.student.train import train_student

    for targets in (["q_projj"], ["q_proj", "v_porj"]):
        cfg = tiny_student(max_steps=1).model_copy(update={"lora": StudentConfig(
            lora={"enabled": True, "r": 2, "alpha": 4, "target_modules": targets}).lora})
        with pytest.raises(DistillError) as exc:
            model, tok = build_student(cfg, str(teacher))
            train_student(model, tok, cfg, write_kept(tmp_path / "kept", 2), tmp_path / "out")
        text = one_line(exc)
        assert text.startswith(f"student.lora.target_modules: no module named {targets[-1]!r} in the student; its "
                               "linear layers are "), text
        assert "q_proj" in text and "down_proj" in text


def test_a_missing_gkd_teacher_is_refused_before_the_student_is_built(tmp_path):
    """Before: reported only after the student was built and RUN/student/init written, as the loader's error
    without saying it was the GKD teacher."""
    from distill.config import load_recipe
    from distill.pipeline import stage_train

    run = filtered_run(tmp_path / "run")
    recipe = load_recipe("tiny", ["student.train.distill_method=gkd", "student.train.max_steps=1",
                                  f"student.train.gkd.teacher={tmp_path}/no-such-teacher"])
    with pytest.raises(DistillError, match=rf"^student\.train\.gkd\.teacher: cannot use the GKD teacher: "
                                           rf"{tmp_path}/no-such-teacher: model folder not found$"):
        stage_train(recipe, run)
    assert not (run / "student" / "init").exists()

    empty = tmp_path / "empty-teacher"
    empty.mkdir()
    recipe = load_recipe("tiny", ["student.train.distill_method=gkd", f"student.train.gkd.teacher={empty}"])
    with pytest.raises(DistillError, match=rf"^student\.train\.gkd\.teacher: cannot use the GKD teacher: {empty}: "
                                           "the folder is empty$"):
        stage_train(recipe, run)
    assert not (run / "student" / "init").exists()


def test_init_config_vocab_size_is_used_and_may_not_be_smaller_than_the_tokenizer(teacher):
    """``distill student plan`` asks for init_config.vocab_size when it cannot see the tokenizer; the same recipe
    must still train (it used to fail with "got multiple values for keyword argument 'vocab_size'")."""
    from transformers import AutoTokenizer

    from distill.student.model import build_student

    tokens = len(AutoTokenizer.from_pretrained(teacher))
    model, tok = build_student(StudentConfig(init_config={**TINY_INIT, "vocab_size": tokens + 8}), str(teacher))
    assert model.config.vocab_size == tokens + 8 and model.config.eos_token_id == tok.eos_token_id
    with pytest.raises(DistillError, match=f"init_config.vocab_size is {tokens - 1} but the student's tokenizer "
                                           f"has {tokens} tokens"):
        build_student(StudentConfig(init_config={**TINY_INIT, "vocab_size": tokens - 1}), str(teacher))


def test_a_max_length_past_the_students_positions_warns(teacher):
    from distill.student.model import build_student

    cfg = tiny_student(max_length=256)
    cfg.init_config = {**TINY_INIT, "max_position_embeddings": 32}
    with pytest.warns(RuntimeWarning, match="train.max_length 256 is longer than the student's "
                                            "max_position_embeddings 32: set max_position_embeddings"):
        build_student(cfg, str(teacher))
    cfg.init_config = {**TINY_INIT, "max_position_embeddings": 256}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        build_student(cfg, str(teacher))


@pytest.mark.parametrize("entry", ["stage", "launcher"])
def test_a_run_refused_before_its_first_checkpoint_leaves_the_folder_unclaimed(tmp_path, capsys, entry):
    """Every trace longer than train.max_length is refused after the student is built. The stage had claimed its
    folder for that config, so the corrected rerun was refused too ("made with a different config"), leaving only
    a new --out or --force. Nothing was trained, so nothing needs the claim: the rerun trains."""
    from distill.config import load_recipe
    from distill.pipeline import stage_train
    from distill.student import launch

    run = filtered_run(tmp_path / "run")

    def train(*overrides):
        if entry == "launcher":
            args = [a for o in overrides for a in ("--set", o)]
            rc = launch.main(["tiny", "--out", str(run), *args])
            assert rc in (0, 2)
            if rc == 2:
                raise DistillError(capsys.readouterr().err)
        else:
            stage_train(load_recipe("tiny", list(overrides)), run)

    with pytest.raises(DistillError, match="longer than 16 tokens"):
        train("student.train.max_length=16")
    train("student.train.max_steps=1")
    assert (run / "student" / "manifest.json").exists() and (run / "student" / "model").is_dir()
    assert json.loads((run / "student" / "manifest.json").read_text())["metrics"]["steps"] == 1
