"""Logit distillation with TRL's GKD trainer (trl.experimental.gkd), for a teacher that shares the tokenizer.

Why: SFT on sampled traces teaches the student one token per position; the teacher's full next-token distribution
carries far more signal per token, and on-policy samples (the student's own, scored by the teacher) correct the
mistakes the student actually makes (Agarwal et al., GKD; the field reports ~10x less compute than RL for similar
AIME gains). GKD needs the teacher's logits over the *same* vocabulary, so it applies where teacher and student
share a tokenizer (the CPU miniature; an R1-Distill-Qwen-32B teacher for a Qwen-1.5B/7B student) and not to
DeepSeek-R1 served over HTTP.

Settings (train.gkd): ``lmbda`` is the fraction of steps on student samples, ``beta`` interpolates the generalised
JSD (0: forward KL, 1: reverse KL), ``seq_kd`` trains off-policy steps on teacher samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..chat_template import assistant_content, render_training_pair, user_message
from ..config import StudentConfig
from ..errors import DistillError
from .distributed import scaled_loss
from .efficiency import resolve_bf16
from .jsd import chunked_generalized_jsd_loss


def gkd_rows(records: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
    """Conversational rows for TRL's ChatML collator; each is first checked through render_training_pair (the
    template keeps the reasoning and ends with EOS) so GKD trains on the same text as SFT."""
    rows = []
    for rec in records:
        render_training_pair(tokenizer, rec["problem"], rec["reasoning"], rec["answer"])
        rows.append({"messages": [{"role": "user", "content": user_message(rec["problem"])},
                                  {"role": "assistant", "content": assistant_content(rec["reasoning"],
                                                                                     rec["answer"])}]})
    return rows


def check_teacher(cfg: StudentConfig, run_teacher: str | None) -> str | None:
    """For a GKD student, the teacher it will load (train.gkd.teacher, else the run's ``run_teacher``), checked
    before anything is built: a missing folder, a folder without a loadable config, tokenizer or weights, or a Hub
    id that cannot load here is one error naming the recipe key. None for an SFT student.

    Why: the teacher loads only once the student is built, its untrained copy written (RUN/student/init) and the
    traces tokenized (minutes for a large student), and its loader's error named neither the key nor that it was
    the GKD teacher."""
    if cfg.train.distill_method != "gkd":
        return None
    from ..hub_access import loadable_ref
    from .model import folder_problem

    named = cfg.train.gkd.teacher
    key = "student.train.gkd.teacher" if named else \
        "teacher.model (the GKD teacher: student.train.gkd.teacher is unset)"
    ref = named or run_teacher
    if not ref:
        raise DistillError("distill_method: gkd needs a teacher model (train.gkd.teacher, or the recipe's teacher)",
                           where="student.train.gkd.teacher")
    try:
        resolved = loadable_ref(ref, "the GKD teacher")
    except DistillError as exc:
        raise DistillError(f"cannot use the GKD teacher: {exc}", where=key) from None
    if Path(resolved).exists():
        problem = folder_problem(resolved, "tokenizer") or folder_problem(resolved, "weights")
        if problem:
            raise DistillError(f"cannot use the GKD teacher: {resolved}: {problem}", where=key)
    return resolved


def load_teacher(ref: str, dtype: torch.dtype = torch.float32, attn: str | None = None):
    """The frozen teacher, in ``dtype``, with attention ``attn`` (the student's: flash-attention where the student
    has it; transformers' default, SDPA, otherwise)."""
    from transformers import AutoModelForCausalLM

    from ..hub_access import loadable_ref
    from .model import load_errors

    resolved = loadable_ref(ref, "the GKD teacher")
    with load_errors(resolved, "the GKD teacher", "weights"):
        return AutoModelForCausalLM.from_pretrained(resolved, dtype=dtype,
                                                    **({"attn_implementation": attn} if attn else {}))


def teacher_attention(student: Any) -> str | None:
    """The attention the student resolved for this machine (efficiency.resolve_attn_implementation), for the
    teacher too: its forward over every batch runs at the student's lengths. ``sdpa_varlen`` serves packed rows,
    which GKD does not build, so the teacher takes plain SDPA then."""
    attn = getattr(student.config, "_attn_implementation", None)
    return "sdpa" if attn == "sdpa_varlen" else attn


def teacher_dtype(cfg: StudentConfig, student: Any) -> torch.dtype:
    """The frozen teacher is only read, never updated, so it loads in bf16 whenever training runs in bf16 (a
    32B teacher: 66 GB instead of 131 GB), even though a fully fine-tuned student keeps float32 master weights
    (model.weights_dtype); otherwise it matches the student."""
    return torch.bfloat16 if resolve_bf16(cfg.train.bf16) else next(student.parameters()).dtype


def match_vocab(student: Any, teacher: Any, tokenizer: Any, rows_ids_max: int) -> None:
    """GKD compares full distributions, so the logit widths must agree. The tokenizer is shared; the embedding
    matrices may differ in padding rows (or an unused trailing token), so the student is resized to the teacher's
    width as long as every id the batches hold fits: the data's, and the PAD the collator fills with (never in the
    data: a PAD the R1 format appended may lie past the teacher's width)."""
    t_vocab = teacher.config.get_text_config().vocab_size
    s_vocab = student.config.get_text_config().vocab_size
    if s_vocab == t_vocab:
        return
    pad = tokenizer.pad_token_id or 0
    if pad >= t_vocab > rows_ids_max:  # the data fits; the PAD the R1 format appended does not
        raise DistillError(f"the student's batches are padded with {tokenizer.pad_token!r} (id {pad}), past the "
                           f"teacher's {t_vocab} logits: the teacher reads every batch, padding included; give the "
                           "student a tokenizer whose pad_token the teacher has (student.tokenizer)",
                           where="student.tokenizer")
    highest = max(rows_ids_max, pad)
    if highest >= t_vocab:
        raise DistillError(f"the student's batches use token id {highest} but the teacher has only {t_vocab} "
                           "logits: teacher and student do not share a tokenizer, so GKD does not apply (use sft)",
                           where="train.distill_method")
    student.resize_token_embeddings(t_vocab, mean_resizing=False)


TOKENIZER_CHECK_TEXTS = 1000


def check_shared_tokenizer(student_tok: Any, teacher_tok: Any, texts: list[str], teacher: str) -> None:
    """Refuse GKD unless the teacher reads the student's token ids as the same text.

    Why: GKD feeds the student's ids to the teacher and compares the two next-token distributions id by id. A
    student whose base lacks the R1 markers gets them appended as new ids (student/template.py), while DeepSeek's
    R1-Distill tokenizers give them the ids of Qwen2.5's own special tokens (``<｜User｜>`` is Qwen's
    ``<|im_start|>`` id). Both vocabularies are the same width, so nothing fails: the teacher reads untrained rows
    where the markers are and the student learns to imitate that. So every training text must encode to the same
    ids under both tokenizers, and every token both vocabularies hold (what on-policy samples may contain) must
    have the same id. The texts compared are the first ``TOKENIZER_CHECK_TEXTS`` (every one carries the markers;
    the vocabulary comparison covers every other token), so 800k traces do not cost two more tokenizations."""
    fix = (f"train the student with the teacher's tokenizer (student.tokenizer: {teacher}), as DeepSeek did for "
           "R1-Distill-Qwen: the markers then keep the ids the teacher was trained on; or use distill_method: sft")
    sample = texts[:TOKENIZER_CHECK_TEXTS]
    student_ids = student_tok(sample, add_special_tokens=False)["input_ids"]
    teacher_ids = teacher_tok(sample, add_special_tokens=False)["input_ids"]
    for s_ids, t_ids in zip(student_ids, teacher_ids):
        if s_ids != t_ids:
            i = next((k for k, (a, b) in enumerate(zip(s_ids, t_ids)) if a != b), min(len(s_ids), len(t_ids)))
            ours = f"{student_tok.convert_ids_to_tokens(s_ids[i])!r} (id {s_ids[i]})" if i < len(s_ids) else "the end"
            theirs = f"{teacher_tok.convert_ids_to_tokens(t_ids[i])!r} (id {t_ids[i]})" if i < len(t_ids) else "the end"
            raise DistillError(f"the student's and the teacher's tokenizers encode the training text differently "
                               f"(token {i}: the student has {ours}, the teacher {theirs}): the teacher would score "
                               f"other tokens than the student writes; {fix}", where="student.tokenizer")
    t_vocab = teacher_tok.get_vocab()
    moved = sorted((i, tok) for tok, i in student_tok.get_vocab().items() if t_vocab.get(tok, i) != i)
    if moved:
        shown = ", ".join(f"{tok!r} (student {i}, teacher {t_vocab[tok]})" for i, tok in moved[:3])
        raise DistillError(f"{len(moved)} token(s) have other ids in the teacher's tokenizer: {shown}; {fix}",
                           where="student.tokenizer")


def gkd_trainer(model: Any, tokenizer: Any, cfg: StudentConfig, records: list[dict[str, Any]], out_dir: Path,
                teacher: str | None, callbacks: list[Any] | None = None):
    """A ready GKDTrainer over the kept records that fit in ``train.max_length`` (the caller trains and saves it),
    the rows it trains on, and how many were too long to train on whole (see drop_overlong in train.py)."""
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from .lora import is_peft_model
    from .model import load_tokenizer
    from .train import drop_overlong, lora_config_for, max_token_id, training_args

    if not teacher:
        raise DistillError("distill_method: gkd needs a teacher model (train.gkd.teacher, or the recipe's teacher)",
                           where="train.gkd.teacher")
    g = cfg.train.gkd
    rows = gkd_rows(records, tokenizer)
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    fitting, overlong = drop_overlong(list(zip(rows, texts)), texts, tokenizer, cfg.train.max_length)
    rows, texts = [row for row, _ in fitting], [text for _, text in fitting]
    check_shared_tokenizer(tokenizer, load_tokenizer(teacher, "the GKD teacher's tokenizer"), texts, teacher)
    teacher_model = load_teacher(teacher, dtype=teacher_dtype(cfg, model), attn=teacher_attention(model))
    max_id = max_token_id(texts, tokenizer)
    if not is_peft_model(model):
        match_vocab(model, teacher_model, tokenizer, max_id)
    # GKD batches are prompt/completion pairs, left-padded by TRL's ChatML collator: no packing.
    args = training_args(cfg, out_dir, tokenizer, model, config_cls=GKDConfig, lmbda=g.lmbda, beta=g.beta,
                         temperature=g.temperature, max_new_tokens=g.max_new_tokens, seq_kd=g.seq_kd,
                         packing=False, padding_free=False)
    trainer = data_parallel_gkd(GKDTrainer)(
        model=model, teacher_model=teacher_model, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer, peft_config=lora_config_for(cfg, tokenizer, model), callbacks=callbacks)
    # TRL samples without the KV cache when gradient checkpointing is on, though it turns checkpointing off while
    # it samples: each new token recomputed its whole prefix, quadratic in the recipe's 4k on-policy tokens
    trainer.generation_kwargs["use_cache"] = True
    trainer.generation_config.use_cache = True
    return trainer, rows, overlong


def data_parallel_gkd(base: type) -> type:
    """TRL's GKDTrainer with its loss scaled like the Trainer's own under data parallelism, and its generalised JSD
    computed a chunk of tokens at a time (jsd.py: the same value and gradient without the 15 vocabulary-wide
    temporaries per token that made GKD at R1 lengths run out of memory).

    Why: with ``average_tokens_across_devices`` (the default) the Trainer hands compute_loss the token count of the
    whole global batch, so each process's loss is its own sum over *all* processes' tokens, and
    Trainer.compute_loss multiplies it by the number of processes to undo DDP's gradient averaging.
    GKDTrainer.compute_loss (TRL 1.16) divides by the global count but skips that multiplication, so on N
    processes the loss and its gradients come out N times too small: the logged curve is wrong and gradient
    clipping (max_grad_norm) is N times looser. Measured: 2 CPU processes logged exactly half the loss of one
    process at the same global batch; tests/test_student_sharded.py checks they now agree."""

    class DataParallelGKDTrainer(base):
        generalized_jsd_loss = staticmethod(chunked_generalized_jsd_loss)  # TRL's formula, a chunk at a time
        dataset_tokens = 0  # the trained tokens of the micro-batch as collated, before TRL may replace it

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.dataset_tokens = trained_tokens(inputs["labels"])
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if num_items_in_batch is not None and self.dataset_tokens:
                num_items_in_batch = on_policy_token_count(num_items_in_batch, self.dataset_tokens,
                                                           trained_tokens(inputs["labels"]))
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if not (self.args.average_tokens_across_devices and num_items_in_batch is not None):
                return result
            scale = self.accelerator.num_processes // self.get_tp_size()
            return result if scale == 1 else scaled_loss(result, scale, return_outputs)

    return DataParallelGKDTrainer


def trained_tokens(labels: Any) -> int:
    """The tokens a batch's loss sums over: labels other than -100 after the causal shift (as compute_loss uses)."""
    return int((labels[:, 1:] != -100).sum())


def on_policy_token_count(num_items_in_batch: Any, collated: int, trained: int) -> Any:
    """The divisor of a micro-batch's summed loss once TRL has replaced its completions with samples.

    Why: the Trainer counts ``num_items_in_batch`` (the global batch's tokens) from the dataset batches before the
    step; on an on-policy (or seq_kd) step TRL swaps in the model's own samples and their labels but passes the
    old count on. The loss over 63 sampled tokens was divided by the 266 tokens of the traces they replaced, so
    on-policy steps trained at a fraction of the learning rate of off-policy ones and lmbda did not mean what the
    recipe says. The count is rescaled by this micro-batch's ratio of trained to collated tokens: exact for one
    micro-batch on one process, and for the others where their samples scale alike."""
    if trained == collated:
        return num_items_in_batch
    return num_items_in_batch * trained / collated


def teacher_placement(teacher: Any) -> dict[str, Any]:
    """How the GKD teacher sits on this process, as the trainer prepared it: ``sharded`` when DeepSpeed ZeRO-3
    partitioned it (TRL prepares it with the student's stage 3) or FSDP wrapped it, and the bytes of it this
    process holds. Recorded in the run's settings; the memory plan (memory.plan_memory) counts the teacher whole
    on every process otherwise, and tests/test_student_sharded.py holds the plan to what this reports."""
    from torch.distributed.tensor import DTensor

    module = getattr(teacher, "module", teacher)  # a DeepSpeed engine wraps it
    held, sharded = 0, False
    for param in module.parameters():
        if hasattr(param, "ds_tensor"):  # ZeRO-3: this process keeps only its partition
            local, sharded = param.ds_tensor, True
        elif isinstance(param, DTensor):
            local, sharded = param.to_local(), True
        else:
            local = param
        held += local.numel() * local.element_size()
    return {"gkd_teacher": "sharded" if sharded else "whole", "gkd_teacher_bytes_per_process": held}
