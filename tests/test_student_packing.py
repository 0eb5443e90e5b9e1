"""Padding-free packing keeps examples apart: positions restart per example and the packed loss is the loss of the
examples trained one by one.

Why: R1 traces are long-tailed (median ~4k tokens, tail to 32k), so padded batches are mostly padding; packing
recovers that compute, but only if packed examples never attend to each other. transformers 5 turns restarting
``position_ids`` into a block-diagonal mask for sdpa and eager (no flash-attention needed), which is what makes the
CPU path and a GPU without flash-attn correct, but only when the forward runs without a KV cache (a cache turns the
packed-sequence detection off): the trainer sets ``use_cache=False``, and these tests pin that. ``sdpa_varlen``
(distill/student/attention.py) attends per document from the collator's boundaries instead, cache or not. The check
is on the real SFTTrainer pipeline (TRL's bfd packing and padding-free collator) with the real model forward.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from distill.student.miniature import kept_rows, tiny_student


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from tests.tiny_models import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def _rows(tok):
    from distill.chat_template import render_training_pair

    rows = []
    for i, r in enumerate(kept_rows(5, seed=2)):
        reasoning = "\n".join([r["reasoning"]] * (1 + i % 3))  # unequal lengths
        prompt, completion = render_training_pair(tok, r["problem"], reasoning, r["answer"])
        rows.append({"prompt": prompt, "completion": completion})
    return rows


def _trainer(model, tok, rows, tmp_path, **train):
    from datasets import Dataset
    from trl import SFTTrainer

    from distill.student.train import training_args

    cfg = tiny_student(max_length=2048, per_device_train_batch_size=len(rows), **train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SFTTrainer(model=model, args=training_args(cfg, tmp_path, tok, model), processing_class=tok,
                          train_dataset=Dataset.from_list(rows))


def _model(tok, impl):
    from transformers import AutoModelForCausalLM, Qwen2Config

    from distill.student.efficiency import resolve_attn_implementation

    impl = resolve_attn_implementation(impl)  # registers sdpa_varlen
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    return AutoModelForCausalLM.from_config(config, attn_implementation=impl).eval()


@pytest.mark.parametrize("impl", ["sdpa", "eager", "sdpa_varlen"])
def test_packed_loss_equals_separate_losses(tok, tmp_path, impl):
    rows = _rows(tok)
    model = _model(tok, impl)
    packed = _trainer(model, tok, rows, tmp_path, packing=True, packing_strategy="bfd")
    assert packed.padding_free  # bfd packing is padding-free: one flat row, no attention mask
    assert model.config.use_cache is False  # the trainer's doing; with a cache sdpa/eager would not separate
    ds = packed.train_dataset
    assert len(ds) == 1  # all five fit one 2048-token bin
    batch = packed.data_collator([ds[i] for i in range(len(ds))])
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    lengths = ds[0]["seq_lengths"]
    assert len(lengths) == len(rows) and sum(lengths) == batch["input_ids"].shape[1]
    expected = torch.cat([torch.arange(n) for n in lengths])
    assert torch.equal(batch["position_ids"][0], expected)  # restart at every example

    separate = _trainer(model, tok, rows, tmp_path)
    assert not separate.padding_free
    with torch.no_grad():
        packed_loss = model(**batch).loss.item()
        total, count = 0.0, 0
        for row in separate.train_dataset:
            b = separate.data_collator([row])
            n = int((b["labels"][:, 1:] != -100).sum())
            total += model(**b).loss.item() * n
            count += n
        # the same flat row as one sequence (positions that do not restart, no boundaries): examples attend to each
        # other, which must show in the loss
        leaky = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.item()
        # without the collator's boundaries the restarting position ids alone keep the documents apart
        bounds = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
        positions_only = model(**{k: v for k, v in batch.items() if k not in bounds}).loss.item()
    # token-weighted mean over examples (the per-token mean a packed batch optimises)
    assert packed_loss == pytest.approx(total / count, rel=1e-5, abs=1e-5)
    assert positions_only == pytest.approx(packed_loss, rel=1e-6, abs=1e-6)
    assert abs(leaky - packed_loss) > 100 * abs(packed_loss - total / count)


def test_varlen_builds_no_mask_for_a_packed_row(tok, tmp_path):
    """sdpa builds an N x N block-diagonal mask for a packed row; sdpa_varlen, which never reads it, builds none
    (1 GiB of bools per forward at 32k tokens). A padded batch still gets its padding mask."""
    from transformers.masking_utils import create_causal_mask

    rows = _rows(tok)
    masks = {}
    for impl in ("sdpa", "sdpa_varlen"):
        model = _model(tok, impl)
        batch = _trainer(model, tok, rows, tmp_path, packing=True).data_collator([{"input_ids": list(range(5, 45)),
                                                                                "seq_lengths": [25, 15]}])
        embeds = model.get_input_embeddings()(batch["input_ids"])
        masks[impl] = create_causal_mask(model.config, embeds, None, None, position_ids=batch["position_ids"])
        padding = torch.ones(2, 40, dtype=torch.long)
        padding[1, 30:] = 0
        padded = create_causal_mask(model.config, embeds.expand(2, -1, -1), padding, None)
        assert padded is not None and padded.shape == (2, 1, 40, 40) and not padded[1, 0, 35, 30:].any()
    assert masks["sdpa"].shape == (1, 1, 40, 40) and not masks["sdpa"][0, 0, 30, :25].any()  # the 2nd document
    assert masks["sdpa_varlen"] is None


def test_varlen_keeps_documents_apart_even_with_a_cache(tok, tmp_path):
    """sdpa/eager separate packed documents only without a KV cache; sdpa_varlen uses the boundaries itself."""
    rows = _rows(tok)
    results = {}
    for impl in ("sdpa", "sdpa_varlen"):
        model = _model(tok, impl)
        packed = _trainer(model, tok, rows, tmp_path, packing=True)
        batch = packed.data_collator([packed.train_dataset[0]])
        first = batch["seq_lengths"][0] if "seq_lengths" in batch else packed.train_dataset[0]["seq_lengths"][0]
        with torch.no_grad():
            logits = model(**batch, use_cache=True).logits[0]
            alone = model(input_ids=batch["input_ids"][:, first:first + 20]).logits[0]
        results[impl] = (logits[first:first + 20] - alone).abs().max().item()  # 2nd document, first 20 tokens
    assert results["sdpa_varlen"] < 1e-5 < results["sdpa"]


def test_padded_batches_are_mostly_padding_packed_are_not(tok, tmp_path):
    """The fraction of real tokens the trainer computes on, for the same rows: padded vs packed."""
    rows = _rows(tok)
    model = _model(tok, "sdpa")
    padded = _trainer(model, tok, rows, tmp_path)
    b = padded.data_collator([padded.train_dataset[i] for i in range(len(rows))])
    padded_real = b["attention_mask"].sum().item() / b["attention_mask"].numel()
    packed = _trainer(model, tok, rows, tmp_path, packing=True)
    pb = packed.data_collator([packed.train_dataset[0]])
    packed_real = sum(packed.train_dataset[0]["seq_lengths"]) / pb["input_ids"].numel()
    assert packed_real == 1.0 and padded_real < 0.9
