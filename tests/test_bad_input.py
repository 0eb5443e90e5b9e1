"""Bad input gets one clear error naming the file and key or line, a non-zero exit, and no traceback."""

from __future__ import annotations

import json

import pytest

from distill.config import load_recipe
from distill.errors import DistillError
from distill.records import ShardedJsonlStore
from tests.conftest import run_cli


def write(path, text):
    path.write_text(text)
    return str(path)


def test_unknown_key_names_file_and_key(tmp_path):
    f = write(tmp_path / "r.yaml", "name: x\ndata: tiny-arith\nteacher: tiny-arith\nstudent: tiny-arith-student\n"
                                   "eval: tiny-arith\nfilter:\n  dedupe: true\n")
    with pytest.raises(DistillError, match=r"r\.yaml: key 'filter\.dedupe': Extra inputs are not permitted"):
        load_recipe(f)


def test_inline_catalog_entry_error_names_its_key_not_the_union_branch(tmp_path):
    """A run recipe may write its student (or data, teacher, eval) inline. pydantic reports such a field once per
    branch of ``str | StudentConfig``, the string branch first: the message read "key 'student.str': Input should
    be a valid string (and 1 more)" whatever key was wrong."""
    inline = ("name: x\ndata: tiny-arith\nteacher: tiny-arith\neval: tiny-arith\n"
              "student:\n  base: some/base\n  train:\n    learning_rate: fast\n")
    with pytest.raises(DistillError, match=r"key 'student\.train\.learning_rate': Input should be a valid number"
                                           r", unable to parse string as a number$"):
        load_recipe(write(tmp_path / "inline.yaml", inline))
    with pytest.raises(DistillError, match=r"key 'student': Input should be a valid dictionary or instance of "
                                           r"StudentConfig$"):
        load_recipe(write(tmp_path / "number.yaml", inline.split("student:")[0] + "student: 5\n"))


def test_wrong_type_in_catalog_entry_via_override_names_entry(tmp_path):
    with pytest.raises(DistillError, match=r"teachers/tiny-arith\.yaml: key 'sampling\.n'"):
        load_recipe("tiny", ["teacher.sampling.n=many"])


def test_unknown_catalog_name_lists_choices():
    with pytest.raises(DistillError, match="no entry named 'nope' in the teachers/ catalog.*tiny-arith"):
        load_recipe("tiny", ["teacher=nope"])


def test_cli_bad_recipe_exits_2_without_traceback(tmp_path):
    f = write(tmp_path / "bad.yaml", "name: x\ndata: tiny-arith\nteacher: tiny-arith\nstudent: tiny-arith-student\n"
                                     "eval: tiny-arith\nseed: abc\n")
    proc = run_cli("run", f, "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "bad.yaml: key 'seed'" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out" / "report.json").exists()


def test_cli_gkd_under_sequence_parallelism_is_refused_before_loading(tmp_path):
    """A layout the trainers cannot run is one error naming the key when the recipe loads, not a wall of
    per-rank tracebacks after the teacher and student have loaded on every GPU."""
    proc = run_cli("student", "train", "tiny", "--out", str(tmp_path / "out"), "--set",
                   "student.train.distill_method=gkd", "--set", "student.train.parallel.sequence_parallel_size=2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    assert "key 'train'" in proc.stderr and "GKD trainer samples from and scores whole sequences" in proc.stderr


def test_cli_invalid_yaml_names_line(tmp_path):
    f = write(tmp_path / "broken.yaml", "name: x\ndata: [unclosed\n")
    proc = run_cli("run", f, "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "broken.yaml:" in proc.stderr and "invalid YAML" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_malformed_prompt_record_names_line(tmp_path):
    prompts = tmp_path / "prompts-train.jsonl"
    prompts.write_text('{"id": "a", "problem": "1+1", "answer": "2"}\n{"id": "b", "problem": \n')
    (tmp_path / "prompts-heldout.jsonl").write_text('{"id": "c", "problem": "1+2", "answer": "3"}\n')
    proc = run_cli("teacher", "generate", "tiny", "--out", str(tmp_path / "out"), "--set", "data.kind=jsonl",
                   "--set", f"data.path={tmp_path}/prompts-{{split}}.jsonl")
    assert proc.returncode == 2, proc.stderr
    assert f"{prompts}:2: malformed record" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "prompts" / "manifest.json").exists()


def test_cli_missing_prompt_file(tmp_path):
    proc = run_cli("teacher", "generate", "tiny", "--out", str(tmp_path / "out"), "--set", "data.kind=jsonl",
                   "--set", f"data.path={tmp_path}/missing-{{split}}.jsonl")
    assert proc.returncode == 2 and "missing-train.jsonl: prompt file not found" in proc.stderr


def test_cli_missing_input_folder_for_filter(tmp_path):
    proc = run_cli("teacher", "filter", "tiny", "--out", str(tmp_path / "nothing-here"))
    assert proc.returncode == 2 and "generations" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "nothing-here" / "filtered" / "manifest.json").exists()


def test_cli_missing_model_folder(tmp_path):
    proc = run_cli("teacher", "generate", "tiny", "--out", str(tmp_path / "out"),
                   "--set", "teacher.model=/nonexistent/model", "--set", "data.train_size=2")
    assert proc.returncode == 2 and "/nonexistent/model" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_prompt_rows_skipped_by_flag_are_reported_with_their_lines(tmp_path):
    """``data.on_bad_row=skip``: malformed lines, non-UTF-8 bytes and rows missing a mapped field are skipped, each
    reported with file:line, and listed in the prompts manifest; the good rows go on to generation."""
    train = tmp_path / "p-train.jsonl"
    train.write_bytes(b'{"q": "1+1", "a": "2"}\n'
                      b'\n'
                      b'{"q": "2+2", "a": \n'                 # line 3: cut short
                      b'{"q": "3+3"}\n'                        # line 4: no answer field
                      b'{"q": "\xff\xfe", "a": "1"}\n'         # line 5: not UTF-8
                      b'[1, 2]\n'                              # line 6: not an object
                      b'{"q": "4+4", "a": "8"}\n')
    (tmp_path / "p-heldout.jsonl").write_text('{"q": "5+5", "a": "10"}\n')
    args = ["teacher", "generate", "tiny", "--set", "data.kind=jsonl",
            "--set", f"data.path={tmp_path}/p-{{split}}.jsonl", "--set", "data.fields.problem=q",
            "--set", "data.fields.answer=a", "--set", "teacher.sampling.n=1"]
    strict = run_cli(*args, "--out", str(tmp_path / "strict"))
    assert strict.returncode == 2 and f"{train}:3: malformed record" in strict.stderr
    assert "on_bad_row=skip" in strict.stderr and "Traceback" not in strict.stderr

    proc = run_cli(*args, "--out", str(tmp_path / "out"), "--set", "data.on_bad_row=skip")
    assert proc.returncode == 0, proc.stderr
    shown = proc.stdout + proc.stderr
    for line in (3, 4, 5, 6):
        assert f"{train}:{line}" in shown
    manifest = json.loads((tmp_path / "out" / "prompts" / "manifest.json").read_text())
    assert manifest["counts"]["train"] == 2 and manifest["counts"]["train_skipped"] == 4
    assert manifest["skipped_rows"]["train"] == [f"{train}:{n}" for n in (3, 4, 5, 6)]
    problems = [r["problem"] for r in ShardedJsonlStore(tmp_path / "out" / "prompts" / "train")]
    assert problems == ["1+1", "4+4"]
    assert ShardedJsonlStore(tmp_path / "out" / "generations").count() == 2


def test_a_refused_rerun_names_the_keys_that_changed(tmp_path):
    """A stage folder made with another config is refused; the error says what changed (it gave two
    fingerprints), or that the inputs changed when the stage's own config did not."""
    import pytest

    from distill.errors import DistillError
    from distill.manifest import Stage, config_changes

    assert config_changes({"a": {"b": 1, "c": 2}, "e": 5}, {"a": {"b": 1, "c": 3}, "d": 4}) == \
        "a.c: 2 -> 3; e: 5 -> (unset); d: (unset) -> 4"
    assert config_changes({"k": list(range(5))}, {"k": []}).startswith("k: [0, 1, 2, 3, 4] -> []")
    assert config_changes({"b": [{"n": "x", "limit": 3}]}, {"b": [{"n": "x", "limit": 2}, {"n": "y"}]}) == \
        "b.0.limit: 3 -> 2; b.1.n: (unset) -> 'y'"  # a list of sections: by index, as --set names them
    Stage("train", tmp_path / "student", "fp1", {"train": {"learning_rate": 0.003}}).begin()
    with pytest.raises(DistillError, match=r"made with a different config \(train.learning_rate: 0.003 -> 0.0001\)"):
        Stage("train", tmp_path / "student", "fp2", {"train": {"learning_rate": 1e-4}}).begin()
    with pytest.raises(DistillError, match="made with a different recipe \\(a setting outside this stage's own "
                                           "section changed"):
        Stage("train", tmp_path / "student", "fp3", {"train": {"learning_rate": 0.003}}).begin()
