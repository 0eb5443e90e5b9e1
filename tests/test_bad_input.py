"""Bad input gets one clear error naming the file and key or line, a non-zero exit, and no traceback."""

from __future__ import annotations

import pytest

from distill.config import load_recipe
from distill.errors import DistillError
from tests.conftest import run_cli


def write(path, text):
    path.write_text(text)
    return str(path)


def test_unknown_key_names_file_and_key(tmp_path):
    f = write(tmp_path / "r.yaml", "name: x\ndata: tiny-arith\nteacher: tiny-arith\nstudent: tiny-arith-student\n"
                                   "eval: tiny-arith\nfilter:\n  dedupe: true\n")
    with pytest.raises(DistillError, match=r"r\.yaml: key 'filter\.dedupe': Extra inputs are not permitted"):
        load_recipe(f)


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
