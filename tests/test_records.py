"""Records and the crash-safe store: torn tails repaired, malformed lines named, datasets can load shards."""

from __future__ import annotations

import json

import pytest

from distill.errors import DistillError
from distill.records import Prompt, ShardedJsonlStore, read_jsonl, repair_torn_tail


def test_append_rotates_shards_and_reads_back(tmp_path):
    with ShardedJsonlStore(tmp_path / "s", records_per_shard=3) as store:
        store.append({"id": str(i), "x": i} for i in range(7))
    store = ShardedJsonlStore(tmp_path / "s")
    assert [p.name for p in store.shards()] == ["shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl"]
    assert [r["x"] for r in store] == list(range(7))


def test_reopen_continues_last_shard(tmp_path):
    with ShardedJsonlStore(tmp_path, records_per_shard=5) as store:
        store.append([{"id": "a"}, {"id": "b"}])
    with ShardedJsonlStore(tmp_path, records_per_shard=5) as store:
        store.append([{"id": "c"}])
    assert ShardedJsonlStore(tmp_path).existing_ids() == {"a", "b", "c"}
    assert len(ShardedJsonlStore(tmp_path).shards()) == 1


def test_torn_tail_is_cut_on_reopen(tmp_path):
    shard = tmp_path / "shard-00000.jsonl"
    shard.write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "comp')
    with ShardedJsonlStore(tmp_path) as store:
        store.append([{"id": "b"}])
    assert [r["id"] for r in ShardedJsonlStore(tmp_path)] == ["a", "b"]
    assert repair_torn_tail(shard) == 0


def test_malformed_line_is_named(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "1", "problem": "x"}\n{not json}\n')
    with pytest.raises(DistillError, match=r"p\.jsonl:2: malformed record"):
        list(read_jsonl(f))
    assert len(list(read_jsonl(f, on_error="skip"))) == 1


@pytest.mark.parametrize("line,where", [('{"id": "1", "problem": "x"', "at the end of the line"),
                                        ('{"id": "1" "problem": "x"}', "at column 12")])
def test_a_malformed_line_names_one_line(tmp_path, line, where):
    """json's own position counts the line's newline as a second line ("line 2 column 1" beside FILE:2): the
    message names the file's line once, and the place inside it as a column or the line's end."""
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "0"}\n' + line + "\n")
    with pytest.raises(DistillError) as err:
        list(read_jsonl(f))
    assert str(err.value).startswith(f"{f}:2: malformed record (JSONDecodeError: ")
    assert str(err.value).endswith(f" {where})") and " line " not in str(err.value).split(":2: ")[1]


def test_non_utf8_line_is_named(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes(b'{"id": "1"}\n{"id": "\xff\xfe"}\n')
    with pytest.raises(DistillError, match=r"p\.jsonl:2"):
        list(read_jsonl(f))


def test_prompt_missing_field_is_named():
    with pytest.raises(DistillError, match="f.jsonl:3.*problem"):
        Prompt.from_dict({"id": "x"}, where="f.jsonl:3")


def test_datasets_loads_shards(tmp_path):
    from datasets import load_dataset

    with ShardedJsonlStore(tmp_path, records_per_shard=2) as store:
        store.append({"id": str(i), "reasoning": "r", "answer": str(i)} for i in range(5))
    ds = load_dataset("json", data_files=[str(p) for p in ShardedJsonlStore(tmp_path).shards()], split="train")
    assert ds.num_rows == 5 and sorted(ds["id"]) == [str(i) for i in range(5)]
