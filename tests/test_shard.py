"""Deterministic --shard i/n splits and crash-safe merging of the shards' stores."""

import pytest

from distill.errors import DistillError
from distill.records import Prompt, ShardedJsonlStore
from distill.teacher.shard import merge_stores, parse_shard, select_shard


def test_shards_partition_the_prompts_stably():
    prompts = [Prompt(id=f"p{i}", problem="x", answer="1") for i in range(500)]
    parts = [select_shard(prompts, i, 4) for i in range(4)]
    ids = [p.id for part in parts for p in part]
    assert sorted(ids) == sorted(p.id for p in prompts)
    assert all(80 < len(part) < 170 for part in parts)
    assert [p.id for p in select_shard(prompts, 2, 4)] == [p.id for p in parts[2]]


@pytest.mark.parametrize("bad", ["3", "4/4", "a/b", "-1/2"])
def test_bad_shard_spec(bad):
    with pytest.raises(DistillError):
        parse_shard(bad)


def test_merge_is_rerunnable_without_duplicates(tmp_path):
    for i in range(2):
        with ShardedJsonlStore(tmp_path / f"part{i}") as s:
            s.append({"id": f"{i}-{j}"} for j in range(5))
    parts = [tmp_path / "part0", tmp_path / "part1"]
    assert merge_stores(parts, tmp_path / "merged") == 10
    assert merge_stores(parts, tmp_path / "merged") == 0
    assert len(ShardedJsonlStore(tmp_path / "merged").existing_ids()) == 10
