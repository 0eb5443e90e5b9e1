"""A generate stage killed with SIGKILL and run again finishes with no record lost and none duplicated."""

from __future__ import annotations

from collections import Counter

from distill.records import ShardedJsonlStore
from tests.conftest import run_cli, sigkill_cli_when

ARGS = ["--set", "data.train_size=48", "--set", "teacher.batch_size=2", "--set", "teacher.sampling.n=2"]


def test_sigkill_then_resume(tmp_path):
    out = tmp_path / "run"
    gen_dir = out / "generations"
    sigkill_cli_when(["teacher", "generate", "tiny", "--out", str(out), *ARGS], gen_dir, records=10)
    partial = list(ShardedJsonlStore(gen_dir))
    assert 10 <= len(partial) < 96, len(partial)
    assert not (gen_dir / "manifest.json").exists(), "a killed stage must not look complete"
    # A torn line, as a crash in the middle of a write would leave it.
    with open(ShardedJsonlStore(gen_dir).shards()[-1], "a") as fh:
        fh.write('{"id": "torn", "prompt_id": "to')

    proc2 = run_cli("teacher", "generate", "tiny", "--out", str(out), *ARGS)
    assert proc2.returncode == 0, proc2.stderr
    records = list(ShardedJsonlStore(gen_dir))
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 96
    assert set(Counter(r["prompt_id"] for r in records).values()) == {2}
    # The records written before the kill are kept as they were, not regenerated.
    assert records[:len(partial)] == partial
    import json
    manifest = json.loads((gen_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["prompts_resumed"] >= 5
