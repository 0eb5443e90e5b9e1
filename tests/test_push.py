"""Export push: dry-run lists files and target; a real push goes through huggingface_hub's API object.

The Hub's servers cannot be reached here, so the real-push test hands ``push`` a recording stand-in for HfApi
(the one adapter mocked); everything else (folder checks, listing, token handling) runs for real.
"""

from __future__ import annotations

import pytest

from distill.errors import DistillError
from distill.export.push import push
from tests.conftest import run_cli


@pytest.fixture
def export_dir(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    for name, text in {"config.json": "{}", "README.md": "card", "generation_config.json": "{}",
                       "model.safetensors": "x" * 100}.items():
        (d / name).write_text(text)
    return d


class RecordingApi:
    def __init__(self, fail: str | None = None):
        self.calls, self.fail = [], fail

    def create_repo(self, **kw):
        self.calls.append(("create_repo", kw))
        if self.fail:
            raise RuntimeError(self.fail)
        return f"https://huggingface.co/{kw['repo_id']}"

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw))

        class Commit:
            oid = "abc123"
        return Commit()


def test_dry_run_lists_files_and_target(export_dir):
    proc = run_cli("export", "push", str(export_dir), "--repo-id", "me/tiny", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would upload 4 files" in proc.stdout and "huggingface.co/me/tiny (private)" in proc.stdout
    assert "model.safetensors  100" in proc.stdout


def test_incomplete_export_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    proc = run_cli("export", "push", str(tmp_path), "--repo-id", "me/x", "--dry-run")
    assert proc.returncode == 2 and "missing README.md" in proc.stderr


def test_real_push_calls_create_and_upload(export_dir):
    api = RecordingApi()
    res = push(export_dir, "me/tiny", private=True, api=api)
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1]["private"] is True and api.calls[1][1]["folder_path"] == str(export_dir)
    assert res["pushed"] and res["commit"] == "abc123"


def test_token_never_in_error(export_dir, monkeypatch):
    secret = "hf_SECRETSECRETSECRET123"
    monkeypatch.setenv("HF_TOKEN", secret)
    with pytest.raises(DistillError) as err:
        push(export_dir, "me/tiny", api=RecordingApi(fail=f"401 Unauthorized for token {secret}"))
    assert secret not in str(err.value) and "push failed" in str(err.value)
