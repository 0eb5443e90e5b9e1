"""GKD (logit distillation) trains a student against a teacher that shares its tokenizer, through the same
train_student entry point and recipe fields as SFT.

Why: ``distill_method: gkd`` swaps the loss (generalised JSD to the teacher's distribution) and adds on-policy
generation; both go through TRL's experimental GKD trainer, whose collator and generation path differ from SFT's.
This runs it for real on CPU with a tiny teacher (benchmarks/bench_gkd_vs_sft.py compares accuracies).
"""

from __future__ import annotations

import math

import pytest
import torch

from distill.chat_template import ASSISTANT, BOS, EOS, USER
from distill.errors import DistillError
from distill.student.miniature import tiny_student, write_kept
from distill.student.model import build_student
from distill.student.train import train_student


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from tests.tiny_models import build_tiny_teacher

    return str(build_tiny_teacher(tmp_path_factory.mktemp("teacher")))


def test_gkd_on_policy_trains_and_saves(teacher, tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoModelForCausalLM

    from distill.student.jsd import ChunkedJSD

    calls = []
    apply = ChunkedJSD.apply
    monkeypatch.setattr(ChunkedJSD, "apply", lambda *args: calls.append(args[0].shape) or apply(*args))
    cfg = tiny_student(max_steps=2, distill_method="gkd",
                       gkd={"teacher": teacher, "lmbda": 1.0, "beta": 0.5, "max_new_tokens": 8})
    model, tok = build_student(cfg, teacher)
    metrics = train_student(model, tok, cfg, write_kept(tmp_path / "kept", 8), tmp_path / "out")
    assert len(calls) == 2  # the trainer's loss is the chunked one, once per step
    assert metrics["settings"]["distill_method"] == "gkd" and metrics["steps"] == 2
    losses = [loss for _, loss in metrics["loss_curve"]]
    assert losses and all(math.isfinite(v) and v >= 0 for v in losses)  # a divergence, not a cross-entropy
    saved = tmp_path / "out" / "model"
    assert AutoConfig.from_pretrained(saved).vocab_size == AutoConfig.from_pretrained(teacher).vocab_size
    student = AutoModelForCausalLM.from_pretrained(saved)
    assert student.generation_config.eos_token_id == tok.eos_token_id


@pytest.mark.parametrize("lmbda", [1.0, 0.0])
def test_each_step_is_divided_by_the_tokens_it_trains_on(teacher, tmp_path, lmbda):
    """On an on-policy step TRL replaces the batch's completions with the student's samples, but the divisor the
    Trainer counted from the dataset batch went on: 63 sampled tokens were divided by the 266 of the traces they
    replaced. Every step's loss is now a mean over the tokens it sums (and on-policy sampling keeps the KV cache,
    which TRL dropped under gradient checkpointing)."""
    from distill.student.gkd import gkd_trainer
    from distill.student.train import kept_records

    cfg = tiny_student(max_steps=3, per_device_train_batch_size=4, gradient_checkpointing=True,
                       distill_method="gkd", gkd={"teacher": teacher, "lmbda": lmbda, "max_new_tokens": 6})
    model, tok = build_student(cfg, teacher)
    trainer, _, _ = gkd_trainer(model, tok, cfg, kept_records(write_kept(tmp_path / "kept", 12)), tmp_path / "out",
                                teacher=teacher)
    assert trainer.generation_kwargs["use_cache"] is True and trainer.generation_config.use_cache is True
    seen, loss = [], trainer.generalized_jsd_loss
    trainer.generalized_jsd_loss = lambda **kw: seen.append(
        (int((kw["labels"] != -100).sum()), float(kw["num_items_in_batch"]))) or loss(**kw)
    trainer.train()
    assert len(seen) == 3
    assert all(summed == divisor for summed, divisor in seen), seen
    if lmbda == 1.0:  # sampled completions of at most 6 tokens, where the traces have dozens
        assert all(summed <= 4 * 6 for summed, _ in seen), seen


def test_gkd_leaves_out_traces_longer_than_max_length(teacher, tmp_path):
    """TRL's ChatML collator keeps the *last* max_length tokens of a row: a trace too long lost its BOS and
    question (or, with the completion alone too long, failed at whichever step drew it). Such traces are left out
    up front, as for SFT, and every row trained on is whole."""
    from distill.student.gkd import gkd_rows, gkd_trainer
    from distill.student.train import kept_records, token_lengths

    cfg = tiny_student(max_steps=1, distill_method="gkd", gkd={"teacher": teacher})
    model, tok = build_student(cfg, teacher)
    records = kept_records(write_kept(tmp_path / "kept", 8, repeat_reasoning=[1, 1, 1, 12]))
    lengths = sorted(token_lengths([tok.apply_chat_template(r["messages"], tokenize=False)
                                    for r in gkd_rows(records, tok)], tok))
    cfg.train.max_length = lengths[5]  # the six short ones fit, the two long ones do not
    assert lengths[6] > lengths[5]
    trainer, rows, dropped = gkd_trainer(model, tok, cfg, records, tmp_path / "out", teacher=teacher)
    assert dropped == 2 and len(rows) == len(trainer.train_dataset) == 6
    collate = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    for ids, mask in zip(collate["input_ids"].tolist(), collate["attention_mask"].tolist()):
        text = tok.decode([i for i, m in zip(ids, mask) if m])
        assert text.startswith(BOS + USER) and text.endswith(EOS)


def test_gkd_with_lora_records_and_warns_that_dropout_is_off(teacher, tmp_path):
    """TRL's GKD zeroes every dropout module, LoRA's too: the run records the dropout its adapters trained with
    (0, not the recipe's 0.1), and a recipe that sets lora.dropout on purpose is told at load."""
    import warnings

    from distill.config import StudentConfig

    cfg = tiny_student(max_steps=1, distill_method="gkd", gkd={"teacher": teacher, "lmbda": 0.0})
    data = {**cfg.model_dump(exclude_unset=True), "lora": {"enabled": True, "r": 4, "dropout": 0.1}}
    with pytest.warns(RuntimeWarning, match=r"student.lora.dropout 0.1 does not apply with distill_method gkd"):
        cfg = StudentConfig.model_validate(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default dropout, or SFT, says nothing
        StudentConfig.model_validate({**data, "lora": {"enabled": True}})
        StudentConfig.model_validate({**data, "train": {**data["train"], "distill_method": "sft"}})
    model, tok = build_student(cfg, teacher)
    metrics = train_student(model, tok, cfg, write_kept(tmp_path / "kept", 4), tmp_path / "out")
    assert metrics["settings"]["lora"] and metrics["settings"]["lora_dropout"] == 0.0


def test_gkd_needs_a_teacher(teacher, tmp_path):
    cfg = tiny_student(max_steps=1, distill_method="gkd")
    model, tok = build_student(cfg, teacher)
    with pytest.raises(DistillError, match="needs a teacher"):
        train_student(model, tok, cfg, write_kept(tmp_path / "kept", 4), tmp_path / "out")


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_teacher_runs_the_students_attention(teacher, tmp_path, attn):
    """The teacher's forward runs over every batch at the student's lengths, so it takes the attention the student
    resolved for the machine (flash-attention on a GPU that has it) rather than transformers' default."""
    from distill.student.gkd import gkd_trainer
    from distill.student.train import kept_records

    cfg = tiny_student(max_steps=1, distill_method="gkd", attn_implementation=attn, gkd={"teacher": teacher})
    model, tok = build_student(cfg, teacher)
    trainer, _, _ = gkd_trainer(model, tok, cfg, kept_records(write_kept(tmp_path / "kept", 4)), tmp_path / "out",
                                teacher=teacher)
    assert model.config._attn_implementation == attn
    assert trainer.teacher_model.config._attn_implementation == attn


def test_frozen_teacher_loads_in_bf16_when_training_in_bf16(teacher, monkeypatch):
    """A fully fine-tuned student keeps float32 master weights under bf16 autocast; the GKD teacher is only read,
    so on a bf16 GPU (its answer given here) it loads in bf16 (a 32B teacher in 66 GB, not 131), and on the CPU it
    matches the student."""
    import torch

    from distill.student import gkd

    model, _ = build_student(tiny_student(), teacher)
    assert next(model.parameters()).dtype is torch.float32
    assert gkd.teacher_dtype(tiny_student(), model) is torch.float32
    monkeypatch.setattr(gkd, "resolve_bf16", lambda requested: True)
    assert gkd.teacher_dtype(tiny_student(), model) is torch.bfloat16
    assert gkd.load_teacher(teacher, gkd.teacher_dtype(tiny_student(), model)).dtype is torch.bfloat16


# DeepSeek's R1-Distill-Qwen tokenizers are Qwen2.5's with its first seven special tokens renamed: the R1 markers
# sit at the ids Qwen2.5 gives <|endoftext|>, <|im_start|>, ... (151643-151649).
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>"]
R1_DISTILL_SPECIALS = [EOS, USER, ASSISTANT, BOS, "<|EOT|>", "<think>", "</think>"]


def _tokenizer(specials: list[str], folder):
    from transformers import PreTrainedTokenizerFast

    from tests.test_student_base_model import _bpe_on_traces

    tok = PreTrainedTokenizerFast(tokenizer_object=_bpe_on_traces(specials), eos_token=specials[0],
                                  pad_token=specials[0], additional_special_tokens=specials[1:])
    tok.save_pretrained(folder)
    return tok


def _qwen2(folder, vocab_size: int, eos: int, seed: int) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                 eos_token_id=eos)).save_pretrained(folder)


@pytest.fixture(scope="module")
def qwen_pair(tmp_path_factory):
    """(a Qwen2.5-Math-like base, an R1-Distill-Qwen-like teacher): one BPE, the specials renamed as DeepSeek did;
    the base's matrix has padding rows, the teacher's is wider (151,936 and 152,064 rows in the real pair)."""
    base, teacher = tmp_path_factory.mktemp("qwen_base"), tmp_path_factory.mktemp("r1_distill_teacher")
    base_tok, teacher_tok = _tokenizer(QWEN_SPECIALS, base), _tokenizer(R1_DISTILL_SPECIALS, teacher)
    _qwen2(base, 384, base_tok.eos_token_id, seed=0)
    _qwen2(teacher, 448, teacher_tok.eos_token_id, seed=1)
    return str(base), str(teacher)


def _gkd_student(base: str, teacher: str, **fields):
    from distill.config import StudentConfig

    cfg = tiny_student(max_steps=2, distill_method="gkd", per_device_train_batch_size=2,
                       gkd={"teacher": teacher, "lmbda": 0.5, "beta": 0.5, "max_new_tokens": 8})
    return StudentConfig(**{**cfg.model_dump(), "init_config": None, "base": base, "chat_format": "r1", **fields})


def test_gkd_refuses_a_student_whose_r1_markers_have_other_ids_than_the_teachers(qwen_pair, tmp_path):
    """The recipe the issue names (R1-Distill-Qwen-32B teaching Qwen2.5-Math-1.5B) in miniature, with the student
    on its base's tokenizer: the R1 markers are appended to it at new ids, the vocabularies are otherwise equal and
    the widths match after resizing, so only this check stands between the run and a teacher scoring untrained
    rows."""
    from transformers import AutoTokenizer

    base, teacher = qwen_pair
    base_ids = AutoTokenizer.from_pretrained(base).get_vocab()
    teacher_ids = AutoTokenizer.from_pretrained(teacher).get_vocab()
    ordinary = set(base_ids) - set(QWEN_SPECIALS)
    assert ordinary and all(base_ids[t] == teacher_ids[t] for t in ordinary)  # one BPE, as in the real pair

    cfg = _gkd_student(base, teacher)
    model, tok = build_student(cfg, teacher)
    assert tok.convert_tokens_to_ids(USER) != teacher_ids[USER]
    with pytest.raises(DistillError, match="encode the training text differently") as err:
        train_student(model, tok, cfg, write_kept(tmp_path / "kept", 8), tmp_path / "out")
    assert err.value.where == "student.tokenizer" and f"student.tokenizer: {teacher}" in str(err.value)
    bos = f"'{BOS}'"
    assert f"the student has {bos} (id {tok.bos_token_id}), the teacher {bos} (id {teacher_ids[BOS]})" in str(err.value)
    assert not (tmp_path / "out" / "model").exists()


def test_gkd_trains_a_qwen_base_on_the_r1_distill_teachers_tokenizer(qwen_pair, tmp_path):
    """The fix the refusal names: the student takes the teacher's tokenizer, so the markers reuse the base's
    special-token rows (no resize for them) and the teacher reads the student's ids as the same text."""
    from transformers import AutoConfig, AutoTokenizer

    base, teacher = qwen_pair
    cfg = _gkd_student(base, teacher, tokenizer=teacher)
    model, tok = build_student(cfg, teacher)
    teacher_tok = AutoTokenizer.from_pretrained(teacher)
    for marker in (BOS, EOS, USER, ASSISTANT, "<think>", "</think>"):
        assert tok.convert_tokens_to_ids(marker) == teacher_tok.convert_tokens_to_ids(marker) < 7
    metrics = train_student(model, tok, cfg, write_kept(tmp_path / "kept", 8), tmp_path / "out")
    assert metrics["steps"] == 2 and all(math.isfinite(v) for _, v in metrics["loss_curve"])
    assert AutoConfig.from_pretrained(tmp_path / "out" / "model").vocab_size == 448  # the teacher's width


def test_match_vocab_keeps_every_id_the_students_tokenizer_gives(qwen_pair):
    """A student wider than its teacher is cut to the teacher's width only if no id its batches hold is cut off
    with it: the data's, and the PAD the collator pads with, which the data never contains."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.student.gkd import match_vocab

    base, teacher = qwen_pair
    tok = AutoTokenizer.from_pretrained(base)
    tok.add_tokens([f"<extra_{i}>" for i in range(100)])
    tok.add_special_tokens({"pad_token": "<pad>"})  # id 450: past the teacher's 448 logits
    student, wide_teacher = AutoModelForCausalLM.from_pretrained(base), AutoModelForCausalLM.from_pretrained(teacher)
    with pytest.raises(DistillError, match=r"padded with '<pad>' \(id 450\), past the teacher's 448 logits"):
        match_vocab(student, wide_teacher, tok, rows_ids_max=300)
    with pytest.raises(DistillError, match="batches use token id 450 but the teacher has only 448"):  # data too
        match_vocab(student, wide_teacher, tok, rows_ids_max=449)
    match_vocab(student, wide_teacher, AutoTokenizer.from_pretrained(base), rows_ids_max=300)
    assert student.config.vocab_size == 448 == student.get_output_embeddings().weight.shape[0]


def test_tokens_outside_the_data_must_keep_their_ids_too(qwen_pair):
    """On-policy steps train on whatever the student samples, so a token the data never holds but both
    vocabularies do must mean the same to the teacher as well."""
    from transformers import AutoTokenizer

    from distill.student.gkd import check_shared_tokenizer

    _, teacher = qwen_pair
    student_tok, teacher_tok = AutoTokenizer.from_pretrained(teacher), AutoTokenizer.from_pretrained(teacher)
    texts = ["What is 12 + 7? 12 + 7 = 19."]
    check_shared_tokenizer(student_tok, teacher_tok, texts, teacher)  # the same tokenizer passes
    student_tok.add_tokens(["<x>"])
    teacher_tok.add_tokens(["<y>", "<x>"])
    x = student_tok.convert_tokens_to_ids("<x>")
    assert teacher_tok.convert_tokens_to_ids("<x>") == x + 1
    with pytest.raises(DistillError, match=rf"1 token\(s\) have other ids .*'<x>' \(student {x}, teacher {x + 1}\)"):
        check_shared_tokenizer(student_tok, teacher_tok, texts, teacher)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("options", [{}, {"num_items_in_batch": 37}, {"reduction": "sum"}, {"reduction": "mean"},
                                     {"temperature": 0.7}], ids=["batchmean", "global-count", "sum", "mean", "T0.7"])
def test_chunked_jsd_equals_trls_loss_and_gradient(beta, options):
    """The chunked loss the trainer uses (jsd.py) against TRL's own ``generalized_jsd_loss`` on masked batches of
    two rows, chunks that cut through the masks: same value and same gradient with respect to the student's
    logits, in float64 so only summation order differs."""
    from trl.experimental.gkd import GKDTrainer

    from distill.student.jsd import chunked_generalized_jsd_loss

    torch.manual_seed(0)
    student = torch.randn(2, 50, 300, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 50, 300, dtype=torch.float64)
    labels = torch.randint(0, 300, (2, 50))
    labels[0, :10], labels[1, 30:] = -100, -100  # a prompt, and padding
    if "num_items_in_batch" in options:
        options = {**options, "num_items_in_batch": torch.tensor(options["num_items_in_batch"])}
    theirs = GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta, **options)
    ours = chunked_generalized_jsd_loss(student, teacher, labels=labels, beta=beta, chunk=16, **options)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-12)
    theirs_grad, = torch.autograd.grad(theirs, student)
    ours_grad, = torch.autograd.grad(ours, student)
    assert torch.allclose(ours_grad, theirs_grad, rtol=1e-10, atol=1e-15)
