"""SFT of the student on the kept traces with TRL's SFTTrainer, loss on the completion only (or GKD, see gkd.py).

Each kept verdict becomes a (prompt, completion) pair rendered through the chat template by
:func:`distill.chat_template.render_training_pair`, which refuses templates that would drop the reasoning. The
completion ends with EOS, so the student learns to stop. Checkpoints are saved every ``train.save_steps`` and a
rerun resumes from the last one.

The same function trains the CPU demo and a 70B student on many nodes: :func:`training_args` turns the recipe into
TRL arguments with the machine-dependent choices resolved (efficiency.py), the gradient accumulation derived from
the global batch and the world size (distributed.py), and sequence/context parallelism handed to accelerate.
Under DDP/ZeRO/FSDP every process runs this function; only the main process writes the final model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from ..chat_template import (ADDED_TOKENS, SPECIAL_TOKENS, marker_in_text, own_control_tokens, render_training_pair,
                             token_in_text)
from ..config import StudentConfig
from ..errors import DistillError, first_line
from ..records import SHARD_GLOB, ShardedJsonlStore, iter_jsonl
from . import distributed
from .efficiency import liger_provider, resolve_attn_implementation, resolve_bf16, resolve_liger, resolve_padding_free
from .lora import (is_peft_model, is_quantized, let_fused_head_read_token_rows, merge_adapter_folder,
                   peft_config, token_row_layers)
from .memory import peak_gpu_gib
from .trackers import resolve_report_to, tensorboard_callbacks, wandb_defaults
from .model import align_eos, publish_dtype, save_model


TRACE_FIELDS = ("problem", "reasoning", "answer")


def marker_in(rec: dict[str, Any]) -> str | None:
    """Which of the chat format's markers a trace's text holds, as ``"its FIELD holds 'MARKER'"``; None if none.

    Why: the rendered text is tokenized with the markers as single control tokens, so a trace whose text holds one
    trains on it: an ``<｜end▁of▁sentence｜>`` or ``<｜User｜>`` in the reasoning or answer (a teacher that ran on
    into a new turn, decoded with its special tokens; an imported dataset) teaches the student to stop or to start a
    turn there, a ``</think>`` in the reasoning to close it early. The think tags are left alone in the problem
    (the prompt is not learned, and the served student sees the same tokens)."""
    for key in TRACE_FIELDS:
        if marker := marker_in_text(rec[key], think_tags=key != "problem"):
            return f"its {key} holds {marker!r}"
    return None


def kept_records(kept_dir: str | Path, left_out: list[str] | None = None,
                 places: list[str] | None = None) -> list[dict[str, Any]]:
    """The kept traces, each checked: ``problem``, ``reasoning`` and ``answer`` must be non-empty strings (not
    only whitespace: that trains an empty think block or no answer). A record that breaks this is one error naming
    its file and line (a hand-edited or imported store can hold a number or a list there, which otherwise failed
    deep in the chat template as an AttributeError).

    ``left_out``: when given, traces whose text holds a chat-format marker (:func:`marker_in`) are left out and
    ``"FILE:LINE: why"`` appended for each, as overlong traces are (the unfiltered ablation trains on every
    generation, where a teacher's stray marker is no reason to stop the run). ``places``: when given, each
    returned record's ``"FILE:LINE"``."""
    recs = []
    for shard in ShardedJsonlStore(kept_dir).shards():
        for lineno, rec in iter_jsonl(shard):
            for key in TRACE_FIELDS:
                value = rec.get(key)
                if not isinstance(value, str) or not value.strip():
                    got = ("missing" if key not in rec else "null" if value is None
                           else "an empty string" if value == "" else "only whitespace" if isinstance(value, str)
                           else type(value).__name__)
                    raise DistillError(f"field '{key}' must be a non-empty string (got {got})",
                                       where=f"{shard}:{lineno}")
            why = marker_in(rec) if left_out is not None else None
            if why:
                left_out.append(f"{shard}:{lineno}: {why}")
                continue
            recs.append(rec)
            if places is not None:
                places.append(f"{shard}:{lineno}")
    report_left_out(left_out or [], len(recs), kept_dir, "a chat-format marker",
                    "each would train as a control token (an EOS mid-trace teaches the student to stop there)")
    if not recs:  # a store is read as its shard files only: data.jsonl beside them is not part of it
        shards = ShardedJsonlStore(kept_dir).shards()
        raise DistillError("no kept traces to train on" + ("" if shards else f" (no {SHARD_GLOB} files in the folder)"),
                           where=str(kept_dir))
    return recs


def report_left_out(left_out: list[str], kept: int, folder: str | Path, holds: str, effect: str) -> None:
    """Traces left out for holding ``holds`` as text (``left_out``: each ``"FILE:LINE: why"``) beside ``kept`` that
    stay: when none stays, one error naming the first; else one warning from the main process."""
    if not left_out:
        return
    if not kept:
        raise DistillError(f"every one of the {len(left_out):,} kept traces holds {holds} as text, e.g. "
                           f"{left_out[0]}", where=str(folder))
    if distributed.is_main_process():
        from ..progress import console

        console.print(f"train: {len(left_out):,} of {kept + len(left_out):,} traces hold {holds} as text and are "
                      f"left out: {effect}; first: {left_out[0]}",
                      style="yellow", highlight=False, soft_wrap=True)  # the file:line unbroken


@dataclass(frozen=True)
class KeptTraces:
    """The traces a student trains on, read and checked (:func:`kept_records`), and those left out for a
    chat-format marker in their text (``"FILE:LINE: why"``).

    Why a value of its own: the train stages read the traces *before* the student is built, so a malformed record
    is one error in seconds rather than after minutes of loading a 70B (and an untrained copy written)."""
    folder: Path
    records: list[dict[str, Any]]
    left_out: list[str]
    places: list[str]  # each record's "FILE:LINE"

    def without_control_text(self, tokenizer: Any) -> "KeptTraces":
        """These traces less those whose text holds one of the student tokenizer's own control tokens
        (:func:`~distill.chat_template.own_control_tokens`), which are left out and counted as the R1 markers are.

        Why: read_kept screens R1's markers before the student (and its tokenizer) exists; a Qwen base's
        ``<|endoftext|>`` (its padding token) or ``<|im_end|>`` in a trace's text is tokenized as that token too,
        and trained on mid-trace. Seen in imported datasets rendered in another chat format."""
        tokens = own_control_tokens(tokenizer)
        if not tokens:
            return self
        records, places, left = [], [], []
        for rec, place in zip(self.records, self.places):
            hit = next(((key, token) for key in TRACE_FIELDS if (token := token_in_text(rec[key], tokens))), None)
            if hit is None:
                records.append(rec)
                places.append(place)
            else:
                left.append(f"{place}: its {hit[0]} holds {hit[1]!r}")
        if not left:
            return self
        report_left_out(left, len(records), self.folder, "one of the student tokenizer's own control tokens",
                        "each would train as that token")
        return replace(self, records=records, places=places, left_out=self.left_out + left)


def read_kept(kept_dir: str | Path) -> KeptTraces:
    left_out: list[str] = []
    places: list[str] = []
    return KeptTraces(Path(kept_dir), kept_records(kept_dir, left_out, places), left_out, places)


def training_pairs(kept: str | Path | KeptTraces, tokenizer: Any) -> list[dict[str, str]]:
    """Each trace rendered as the student's prompt (ending in the prefilled ``<think>\\n``) and completion."""
    rows = []
    for rec in (kept if isinstance(kept, KeptTraces) else read_kept(kept)).records:
        prompt, completion = render_training_pair(tokenizer, rec["problem"], rec["reasoning"], rec["answer"])
        rows.append({"prompt": prompt, "completion": completion})
    return rows


TOKENIZE_BATCH = 1024  # texts per tokenizer call: only their lengths are kept (800k traces' ids would not fit)


def encoded(texts: list[str], tokenizer: Any) -> Iterator[list[int]]:
    """Each rendered text's token ids, as the trainer will see them (the template writes BOS/EOS; the tokenizer
    adds nothing: template.stop_automatic_special_tokens), encoded TOKENIZE_BATCH texts at a time."""
    for i in range(0, len(texts), TOKENIZE_BATCH):
        yield from tokenizer(texts[i:i + TOKENIZE_BATCH], add_special_tokens=False, verbose=False)["input_ids"]


def token_lengths(texts: list[str], tokenizer: Any) -> list[int]:
    return [len(ids) for ids in encoded(texts, tokenizer)]


def max_token_id(texts: list[str], tokenizer: Any) -> int:
    return max(max(ids) for ids in encoded(texts, tokenizer))


def drop_overlong(rows: list[Any], texts: list[str], tokenizer: Any, max_length: int | None) -> tuple[list[Any], int]:
    """``rows`` whose rendered text fits in ``max_length`` tokens, and how many did not.

    Why drop rather than let TRL truncate: a trace cut at ``max_length`` (TRL keeps the start for SFT, the end for
    GKD) loses its ``</think>``, its answer and its EOS, so the student learns from its longest traces to keep
    reasoning and never stop (REFERENCE.md pitfall 1); a GKD row cut from the left loses its BOS and question, or
    fails mid-run when the completion alone is too long. Teachers sample up to 32k new tokens while a student may
    train at 16k, so this is not rare; the count goes into the run's metrics and a warning names the setting."""
    if max_length is None:
        return rows, 0
    kept = [row for row, n in zip(rows, token_lengths(texts, tokenizer)) if n <= max_length]
    dropped = len(rows) - len(kept)
    if not kept:
        raise DistillError(f"every one of the {len(rows):,} kept traces is longer than {max_length:,} tokens; raise "
                           "train.max_length", where="student.train.max_length")
    if dropped and distributed.is_main_process():
        from ..progress import console

        console.print(f"train: {dropped:,} of {len(rows):,} traces ({dropped / len(rows):.1%}) are longer than "
                      f"train.max_length ({max_length:,} tokens) and are left out: cut, they would end without "
                      "their answer and EOS", style="yellow", highlight=False)
    return kept, dropped


def resolved_settings(cfg: StudentConfig, model: Any = None) -> dict[str, Any]:
    """What this machine will actually use for the recipe's ``auto`` settings (recorded in the stage metrics)."""
    t = cfg.train
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None) if model is not None else None
    packed = resolve_padding_free(t.packing, t.packing_strategy, t.padding_free)
    liger = resolve_liger(t.use_liger_kernel)
    return {"attn_implementation": attn or resolve_attn_implementation(t.attn_implementation, packed=packed),
            "use_liger_kernel": liger, "liger_provider": liger_provider() if liger else None,
            "bf16": resolve_bf16(t.bf16), "gradient_checkpointing": t.checkpointing(torch.cuda.is_available()),
            "padding_free": packed,
            "report_to": resolve_report_to(t.report_to), "world_size": distributed.world_size(),
            "gradient_accumulation_steps": distributed.gradient_accumulation(t)}


def training_args(cfg: StudentConfig, out_dir: str | Path, tokenizer: Any, model: Any = None,
                  config_cls: Any = None, **extra: Any):
    """The recipe as an SFTConfig (or ``config_cls``, e.g. GKDConfig), with auto settings resolved.

    ``use_liger_kernel`` is deliberately left at TRL's default (False): TRL 1.16 deprecates it (a FutureWarning on
    every run that sets it) in favour of transformers' Hub kernels; the recipe's ``train.use_liger_kernel`` is
    honoured by :func:`liger_package_kernels` or :func:`liger_callbacks` instead."""
    from trl import SFTConfig

    t = cfg.train
    s = resolved_settings(cfg, model)
    config_cls = config_cls or SFTConfig
    report_to = [r for r in s["report_to"] if r != "tensorboard"]  # tensorboard: own callback, own folder
    if "wandb" in report_to:
        wandb_defaults(Path(out_dir), resumes=has_complete_checkpoint(Path(out_dir)))
    kwargs = dict(
        output_dir=str(Path(out_dir) / "checkpoints"), learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type, lr_scheduler_kwargs=dict(t.lr_scheduler_kwargs),
        warmup_steps=warmup_fraction(t.warmup_ratio),
        num_train_epochs=t.num_train_epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=s["gradient_accumulation_steps"], max_length=t.max_length,
        max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay, optim=t.optim, adam_beta2=t.adam_beta2,
        packing=t.packing, packing_strategy=t.packing_strategy, padding_free=s["padding_free"],
        gradient_checkpointing=s["gradient_checkpointing"],  # Liger: liger_callbacks, not use_liger_kernel
        gradient_checkpointing_kwargs={"use_reentrant": False} if s["gradient_checkpointing"] else None,
        bf16=s["bf16"], logging_steps=t.logging_steps, seed=t.seed,
        completion_only_loss=True, eos_token=tokenizer.eos_token,
        report_to=report_to or "none", include_num_input_tokens_seen="non_padding", run_name=cfg.name,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit, save_only_model=False,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if distributed.world_size() > 1 and not torch.cuda.is_available() else None,
        # every trainable parameter takes part in each step; the Trainer's default (True without gradient
        # checkpointing) cost DDP an extra pass over the autograd graph per step and a warning per rank
        ddp_find_unused_parameters=False,
        parallelism_config=distributed.parallelism_config(t.parallel, s["attn_implementation"], s["padding_free"]),
        pad_to_multiple_of=distributed.pad_to_multiple_of(t),
        dataset_num_proc=None, disable_tqdm=True,
    )
    kwargs.update(extra)
    return config_cls(**kwargs)


def warmup_fraction(ratio: float) -> float:
    """``train.warmup_ratio`` as transformers 5's ``warmup_steps``, which reads a value below 1 as a fraction of the
    run and anything from 1 up as a number of steps: a ratio of 1.0 (warm up over the whole run, which the recipe
    allows) warmed up for one step. The largest float below 1 gives ceil(steps x it) = steps, the whole run."""
    return math.nextafter(1.0, 0.0) if ratio >= 1 else ratio


def r1_token_ids(tokenizer: Any) -> list[int]:
    """The ids of the R1 markers (BOS/EOS/PAD, User/Assistant, think tags) in ``tokenizer``."""
    return sorted({i for i in tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS + ADDED_TOKENS)
                   if i is not None and i != tokenizer.unk_token_id})


def liger_callbacks(provider: str | None) -> list[Any]:
    """The callback that loads Liger's kernels as transformers Hub kernels, when that is the ``provider`` resolved
    for the recipe's ``train.use_liger_kernel`` (settings["liger_provider"]: None when off); the liger-kernel
    package is applied by :func:`liger_package_kernels` instead.

    ``model.use_kernels = True`` is set at ``on_train_begin`` because kernelize picks each kernel by the model's
    device and train/eval mode, and a model still on the CPU (the Trainer moves it later) would get none;
    transformers re-kernelizes by itself when the mode changes (e.g. around GKD's generation).

    Why not TRL's ``use_liger_kernel``: TRL 1.16 deprecates it (a FutureWarning on every run). Either way only the
    layer kernels apply: TRL computes the loss with its own fused LM head, never Liger's fused linear
    cross-entropy."""
    if provider != "hub":
        return []
    from transformers import TrainerCallback

    class HubKernels(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            apply_hub_kernels(model)

    return [HubKernels()]


@contextlib.contextmanager
def liger_package_kernels(model: Any, provider: str | None) -> Iterator[None]:
    """liger-kernel's RMSNorm, SwiGLU and RoPE kernels on ``model`` while training (when the package is the
    resolved ``provider``), patched in before any wrapping by DeepSpeed/FSDP/PEFT; no fused linear
    cross-entropy (TRL's fused LM head owns the loss).

    Liger patches the model's modeling module too (``modeling_qwen2.apply_rotary_pos_emb``, the ``Qwen2RMSNorm``
    class), which would reach every model built later in the same process: the pipeline then evaluated the
    teacher on the CPU through a Triton kernel and failed ("cannot be accessed from Triton (cpu tensor?)", seen
    on an H200). Those module-level patches are undone when training ends; the trained instance keeps its own."""
    if provider != "liger_kernel":
        yield
        return
    from transformers.integrations.liger import apply_liger_kernel

    base = model.get_base_model() if is_peft_model(model) else model
    with module_patches_undone(sys.modules[type(base).__module__]):
        apply_liger_kernel(model, {"fused_linear_cross_entropy": False, "cross_entropy": False})
        yield


@contextlib.contextmanager
def module_patches_undone(module: Any) -> Iterator[None]:
    """Whatever is rebound in ``module``'s namespace inside the block is put back (and names added are removed)
    when it ends, also on error."""
    before = dict(vars(module))
    try:
        yield
    finally:
        now = vars(module)
        for name in [n for n in now if n not in before]:
            delattr(module, name)
        for name, value in before.items():
            if now.get(name) is not value:
                setattr(module, name, value)


def apply_hub_kernels(model: Any) -> None:
    """Kernelize ``model`` (a PEFT wrapper's base) for training. A kernel that cannot be fetched (an offline node
    without it in the Hub cache) warns and the layers stay as they are, as efficiency.py does for anything a
    machine lacks."""
    base = model.get_base_model() if is_peft_model(model) else model
    base.train()
    try:
        base.use_kernels = True
    except (ImportError, ValueError, OSError) as exc:
        with warnings.catch_warnings():  # train_student silences library warnings while it trains; not this one
            warnings.simplefilter("always")
            warnings.warn(f"use_liger_kernel: the Hub kernels could not be applied ({exc}); training without them",
                          RuntimeWarning, stacklevel=2)


def lora_config_for(cfg: StudentConfig, tokenizer: Any, model: Any = None):
    """LoRA config whose R1 marker rows (think tags, User/Assistant, EOS: new ids for a base) are trained in full
    (PEFT TrainableTokens) in the input embedding *and* the output layer, so the student learns what the markers
    mean and when to emit them (close its reasoning, stop). A base that lacks the markers starts those rows at the
    mean initialisation install_r1_format gives them; LoRA on the linear layers alone cannot move them.

    The output rows train through TRL's fused LM head (which reads the output layer's weight directly) because
    PEFT's wrapper serves that weight with the trained rows spliced in; see lora.let_fused_head_read_token_rows.
    Full fine-tuning trains every row."""
    if model is None:
        return peft_config(cfg.lora)
    return peft_config(cfg.lora, trainable_token_ids=token_row_layers(model, r1_token_ids(tokenizer)))


def last_checkpoint(out_dir: Path) -> str | None:
    """The newest *complete* checkpoint in ``out_dir/checkpoints``, or None; newer incomplete ones are removed.

    Why not transformers' get_last_checkpoint: it takes the highest-numbered folder, and the Trainer writes a
    checkpoint in place (weights, optimizer, scheduler, RNG, then trainer_state.json last), so a job killed while
    saving (preemption lands there often: a 70B checkpoint takes minutes to write) leaves a newest folder that
    cannot be loaded and every resubmission crashes on it. A checkpoint counts as complete when its
    trainer_state.json parses; the incomplete newer ones hold nothing a resume can use and are deleted by the
    main process, so the resumed run can write those steps again."""
    steps = checkpoint_folders(out_dir)
    unfinished = {step: _unfinished_because(p) for step, p in steps.items()}
    complete = [step for step, why in unfinished.items() if why is None]
    newest = max(complete, default=None)
    if distributed.is_main_process():
        for step, p in sorted(steps.items()):
            if step not in complete and (newest is None or step > newest):
                print(f"train: {p.name} was not finished ({unfinished[step]}); removing it and resuming from "
                      f"{f'checkpoint-{newest}' if newest is not None else 'the start'}", file=sys.stderr)
                shutil.rmtree(p, ignore_errors=True)
    return str(steps[newest]) if newest is not None else None


def resumable_checkpoint(out_dir: Path) -> str | None:
    """:func:`last_checkpoint`, refused with one error when this launch cannot resume it as it was written.

    Why: each launcher writes the optimizer state its own way and reads back only its own. DeepSpeed (ZeRO-2/3)
    writes one shard per process: a preempted 32B run resubmitted on another number of nodes stopped with a bare
    ``AssertionError`` inside DeepSpeed's loader on every rank without a shard, and one resumed without DeepSpeed
    found no ``optimizer.pt`` and went on silently with a fresh optimizer, Adam's moments lost. FSDP writes
    ``pytorch_model_fsdp*`` and ``optimizer*`` (a file each, or per-process shards in a folder): resumed without
    FSDP the Trainer stopped on ``ValueError`` ("only supported when using PyTorch FSDP"), and a plain checkpoint
    resumed under FSDP on FileNotFoundError, both after the weights had loaded (all measured). Within a launcher:
    one-process and DDP checkpoints hold the whole optimizer state and resume on any number of plain processes;
    FSDP checkpoints, sharded (the shipped fsdp2.yaml) or full, on any number of FSDP processes (tested 2 -> 4)."""
    checkpoint = last_checkpoint(out_dir)
    if checkpoint is None:
        return None
    shards = len({p.name for p in Path(checkpoint).glob("global_step*/zero_pp_rank_*_optim_states.pt")})
    written = "deepspeed" if shards else "fsdp" if any(Path(checkpoint).glob("pytorch_model_fsdp*")) else "plain"
    launch = {"deepspeed": "deepspeed", "fsdp": "fsdp"}.get(distributed.launcher_kind(), "plain")
    world = distributed.world_size()
    this_launch = f"this launch is {processes(world)} " + {"deepspeed": "under DeepSpeed", "fsdp": "under FSDP",
                                                            "plain": "without DeepSpeed or FSDP"}[launch]
    fix = "or start over with --force or a new --out"
    if written == "deepspeed" and (launch != "deepspeed" or shards != world):
        raise DistillError(f"written by {processes(shards, 'DeepSpeed ')} (one optimizer shard each) and "
                           f"{this_launch}; resume with the accelerate config that wrote it on {processes(shards)}, "
                           f"{fix}", where=checkpoint)
    if written != launch and written != "deepspeed":
        what = {"fsdp": "under FSDP (pytorch_model_fsdp*)",
                "plain": "without DeepSpeed or FSDP (optimizer.pt)"}[written]
        raise DistillError(f"written {what} and {this_launch}; resume with the launch that wrote it, {fix}",
                           where=checkpoint)
    if written != "deepspeed" and (missing := missing_optimizer_state(Path(checkpoint))):
        raise cannot_resume(checkpoint, f"it has no {missing}, so the run would go on with a fresh optimizer "
                                        "(Adam's moments lost) and its learning-rate schedule started over")
    return checkpoint


def missing_optimizer_state(checkpoint: Path) -> str | None:
    """The optimizer or scheduler file a plain or FSDP checkpoint lacks, or None when it has both.

    Why: the Trainer loads the optimizer and scheduler state only when both are there and otherwise goes on
    without a word, from the resumed weights but with a new optimizer and the warm-up run again at the resumed
    step. The Trainer writes both before trainer_state.json, so only a damaged or partly copied checkpoint lacks
    one; DeepSpeed's own loader fails on a missing file (caught by :func:`resume_errors`). The names are the
    Trainer's: ``optimizer.pt`` (``.bin`` or a per-process folder under FSDP) and ``scheduler.pt``."""
    has_optimizer = (checkpoint / "optimizer.pt").is_file() or (checkpoint / "optimizer.bin").is_file() or any(
        p.is_dir() and "optimizer" in p.name for p in checkpoint.iterdir())
    if not has_optimizer:
        return "optimizer.pt"
    return None if (checkpoint / "scheduler.pt").is_file() else "scheduler.pt"


def cannot_resume(checkpoint: str, why: str) -> DistillError:
    """The one error for a checkpoint a run cannot go on from: the folder, why, and the two ways out."""
    return DistillError(f"cannot resume from this checkpoint: {why}; delete this checkpoint folder to resume from "
                        "an earlier one (or from the start), or rerun with --force to start over", where=checkpoint)


def processes(n: int, kind: str = "") -> str:
    return f"{n} {kind}process{'es' if n != 1 else ''}"


@contextlib.contextmanager
def claim_released_if_nothing_trained(stage: Any, main_process: bool = True) -> Iterator[None]:
    """Release the train stage's claim on its folder when training fails before its first checkpoint.

    Why: a run refused for its input (every trace longer than train.max_length, a tracker not installed) or
    stopped before step save_steps has nothing to resume, yet its claim made the corrected rerun fail as "holds
    output of stage 'train' made with a different config", leaving only a new --out or --force. With a checkpoint
    the claim stays: resuming it under another config would mix two runs."""
    try:
        yield
    except BaseException:
        if main_process and not checkpoint_folders(stage.folder):
            stage.release()
        raise


def checkpoint_folders(out_dir: Path) -> dict[int, Path]:
    """The Trainer's ``checkpoint-N`` folders in ``out_dir/checkpoints``, by step N, finished or not."""
    return {int(p.name.split("-")[1]): p for p in (Path(out_dir) / "checkpoints").glob("checkpoint-*")
            if p.is_dir() and p.name.split("-")[1].isdigit()}


def has_complete_checkpoint(out_dir: Path) -> bool:
    """Whether training in ``out_dir`` will resume (a complete checkpoint exists) rather than start at step 0; it
    reads only, where :func:`last_checkpoint` also removes the incomplete ones."""
    return newest_complete_step(out_dir) > 0


def newest_complete_step(out_dir: Path) -> int:
    """The step of the newest complete checkpoint (the one training will resume from), 0 without one; reads only."""
    return max((step for step, p in checkpoint_folders(out_dir).items() if _unfinished_because(p) is None), default=0)


def _unfinished_because(folder: Path) -> str | None:
    """Why checkpoint ``folder`` was not finished (its trainer_state.json, written last, is missing or does not
    parse: the write was cut off), or None when it was."""
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "its trainer_state.json is cut short or not valid JSON"
    return None


RESUME_LOADERS = {"_load_from_checkpoint": "its weights", "_load_optimizer_and_scheduler": "its optimizer or scheduler "
                  "state", "_load_scaler": "its gradient scaler state", "_load_rng_state": "its RNG state",
                  "_load_callback_state": "its callback state"}  # the Trainer's methods that read a checkpoint


@contextlib.contextmanager
def resume_errors(trainer: Any, checkpoint: str | None) -> Iterator[None]:
    """Inside the block, an error raised while ``trainer`` loads ``checkpoint`` (weights, optimizer, scheduler,
    scaler, RNG and callback states, DeepSpeed's shards, the trainer state) becomes one DistillError naming the
    checkpoint folder, the cause's first line and the fix; errors of training itself pass unchanged.

    Why: a checkpoint can be complete by :func:`last_checkpoint`'s test (trainer_state.json parses) and still not
    load: a weights or optimizer file cut short by a full disk or a bad copy, a folder holding only the state, or
    checkpoints copied from a run of another model shape. Those failed as a SafetensorError, an UnpicklingError,
    ValueError("Can't find a valid checkpoint") or a many-line size-mismatch RuntimeError, none saying which folder
    to remove. Only the trainer's loading methods are guarded (per instance; DeepSpeed's loader, a module function
    of transformers.trainer, for the length of the block), so an out-of-memory or a bug in a training step is not
    blamed on the checkpoint."""
    if checkpoint is None:
        yield
        return
    import functools

    import transformers.trainer as trainer_module
    from transformers import TrainerState

    def guarded(load: Any, what: str) -> Any:
        @functools.wraps(load)
        def load_or_refuse(*args: Any, **kwargs: Any) -> Any:
            try:
                return load(*args, **kwargs)
            except (DistillError, torch.OutOfMemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - whatever the loader hit, the checkpoint is the cause
                raise cannot_resume(checkpoint, f"{what} did not load ({first_line(exc).rstrip('.')})") from exc
        return load_or_refuse

    deepspeed_load = trainer_module.deepspeed_load_checkpoint
    for name, what in RESUME_LOADERS.items():
        if hasattr(trainer, name):
            setattr(trainer, name, guarded(getattr(trainer, name), what))
    trainer_module.deepspeed_load_checkpoint = guarded(deepspeed_load, "its DeepSpeed state")
    try:  # train() reads the trainer state bare, before any of these
        guarded(TrainerState.load_from_json, "its trainer_state.json")(os.path.join(checkpoint, "trainer_state.json"))
        yield
    finally:
        trainer_module.deepspeed_load_checkpoint = deepspeed_load
        for name in RESUME_LOADERS:
            trainer.__dict__.pop(name, None)


def train_student(model: Any, tokenizer: Any, cfg: StudentConfig, kept: str | Path | KeptTraces,
                  out_dir: str | Path, sampling=None, teacher_model: str | None = None) -> dict[str, Any]:
    """Train on ``kept`` (a kept-traces folder, or the traces :func:`read_kept` read from one) and save to
    ``out_dir/model``; returns metrics (loss, steps, tokens/s, seconds).

    ``teacher_model`` (a path or id) is the GKD teacher when ``train.gkd.teacher`` is not set."""
    from datasets import Dataset

    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    out_dir = Path(out_dir)
    settings = resolved_settings(cfg, model)
    callbacks = tensorboard_callbacks(cfg, out_dir, resume_step=newest_complete_step(out_dir)) + \
        liger_callbacks(settings["liger_provider"]) + [last_step_logged()]
    kept = (kept if isinstance(kept, KeptTraces) else read_kept(kept)).without_control_text(tokenizer)
    with warnings.catch_warnings(), liger_package_kernels(model, settings["liger_provider"]):
        warnings.simplefilter("ignore")
        if t.distill_method == "gkd":
            from .gkd import gkd_trainer

            trainer, rows, overlong = gkd_trainer(model, tokenizer, cfg, kept.records, out_dir,
                                                  teacher=t.gkd.teacher or teacher_model, callbacks=callbacks)
        else:
            from trl import SFTTrainer

            from .ulysses import ulysses_sft_trainer

            pairs = training_pairs(kept, tokenizer)
            rows, overlong = drop_overlong(pairs, [r["prompt"] + r["completion"] for r in pairs], tokenizer,
                                           t.max_length)
            trainer_cls = SFTTrainer if t.parallel.sequence_parallel_size == 1 else \
                ulysses_sft_trainer(SFTTrainer)
            trainer = trainer_cls(model=model, args=training_args(cfg, out_dir, tokenizer, model),
                                  train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                                  peft_config=lora_config_for(cfg, tokenizer, model), callbacks=callbacks)
        if t.distill_method == "gkd":
            from .gkd import teacher_placement

            settings.update(teacher_placement(trainer.teacher_model))
        if (reduce_dtype := distributed.reduce_gradients_in_float32(trainer.accelerator)) is not None:
            settings["fsdp_gradient_reduce_dtype"] = reduce_dtype
        settings["lora_dropout"] = lora_dropout(trainer.model)  # before training: saving merges the adapters
        let_fused_head_read_token_rows(trainer.model)
        quiet_progress(trainer)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        start = time.time()
        checkpoint = resumable_checkpoint(out_dir)
        before = checkpoint_progress(checkpoint)
        with resume_errors(trainer, checkpoint), no_step_past_the_end(trainer):
            trainer.train(resume_from_checkpoint=checkpoint)
        seconds = time.time() - start
    save_trained(trainer, tokenizer, cfg, out_dir / "model", sampling)
    history = [h for h in trainer.state.log_history if "loss" in h]
    if distributed.is_main_process():
        plot_loss(history, out_dir / "loss.png")
    tokens = trainer.state.num_input_tokens_seen
    tokens_now = tokens - before["tokens"] if tokens else 0  # this session's: a resumed run's count starts higher
    return {"examples": len(rows), "overlong_dropped": overlong, "marker_dropped": len(kept.left_out),
            "steps": trainer.state.global_step,
            "resumed_from_step": before["step"], "train_loss": mean_logged_loss(history),
            "final_loss": history[-1]["loss"] if history else None, "seconds": round(seconds, 1),
            "tokens": tokens, "tokens_per_s": round(tokens_now / max(seconds, 1e-6)) if tokens_now > 0 else None,
            "loss_curve": [(h["step"], h["loss"]) for h in history],
            "lr_curve": [(h["step"], h["learning_rate"]) for h in history if "learning_rate" in h],
            "trainable_parameters": trainable, "gpu_peak_gib": peak_gpu_gib(),
            "settings": {**settings, "distill_method": t.distill_method, "sharding": sharding(trainer),
                         "lora": cfg.lora.enabled, **getattr(model, "distill_build_info", {})}}


def lora_dropout(model: Any) -> float | None:
    """The dropout the LoRA adapters trained with, read from the model (None without LoRA): GKD turns it off
    whatever the recipe set (TRL's disable_dropout), so the recipe's value alone would misreport the run."""
    rates = [float(getattr(module, "p", 0.0)) for name, module in model.named_modules()
             if name.split(".")[-2:-1] == ["lora_dropout"]]  # PEFT: <layer>.lora_dropout.<adapter>
    return max(rates) if rates else None


def checkpoint_progress(checkpoint: str | None) -> dict[str, int]:
    """Where a resumed run starts: the checkpoint's step and the input tokens seen by then (0 and 0 without one),
    so that this session's tokens/s counts only the tokens it trained on."""
    if checkpoint is None:
        return {"step": 0, "tokens": 0}
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return {"step": int(state.get("global_step") or 0), "tokens": int(state.get("num_input_tokens_seen") or 0)}


def mean_logged_loss(history: list[dict[str, Any]]) -> float | None:
    """The run's mean training loss over all its steps, from the logged losses (each the mean of the steps since
    the log before), weighted by those step counts.

    Why not the Trainer's ``training_loss``: it averages only the steps of the current ``train()`` call, so a
    resumed run reported the mean of its last few steps (2.62 where the whole run's was 3.55). The log history
    comes back from the checkpoint, and the last step is always logged (:func:`last_step_logged`)."""
    total, steps, previous = 0.0, 0, 0
    for h in history:
        total += h["loss"] * (h["step"] - previous)
        steps += h["step"] - previous
        previous = h["step"]
    return round(total / steps, 4) if steps else None


def last_step_logged() -> Any:
    """A callback that logs the final step, and every step a checkpoint is saved at, as well as every
    ``logging_steps``-th.

    Why: the Trainer logs only at multiples of logging_steps, so a run shorter than logging_steps logged no loss
    at all (no loss.png, no curve, ``final_loss`` None) and a longer one's curve and final loss stopped at the last
    multiple (step 50 of 70). A checkpoint between two logs (save_steps 25, logging_steps 10) left the steps since
    the last log (21-25) in no log a resumed run could read back: its first log (step 30) was the mean of 26-30
    alone, a different curve point and ``train_loss`` than the unbroken run's. Logged at the save, the checkpoint's
    history ends exactly where the resumed Trainer starts counting."""
    from transformers import TrainerCallback

    class LastStepLogged(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save or (state.max_steps > 0 and state.global_step >= state.max_steps):
                control.should_log = True

    return LastStepLogged()


@contextlib.contextmanager
def no_step_past_the_end(trainer: Any) -> Iterator[None]:
    """Inside the block, a run resumed from a checkpoint written at its last step trains no further step.

    Why: the Trainer checks for the end only after a step. A run killed after its final checkpoint but before its
    model was saved (a 70B's save and merge take minutes) resumed at step max_steps, trained step max_steps + 1,
    wrote checkpoint-41 of 40 and saved that model. The Trainer's epoch loop is wrapped for this one call: at or
    past the end it stops before the epoch runs, after the checkpoint's weights and state have loaded."""
    run_epoch = getattr(trainer, "_run_epoch", None)
    if run_epoch is None:  # pragma: no cover - a transformers without the per-epoch method
        yield
        return

    def run_epoch_unless_finished(*args: Any, **kwargs: Any) -> Any:
        if 0 < trainer.state.max_steps <= trainer.state.global_step:
            trainer.control.should_training_stop = True
            return None
        return run_epoch(*args, **kwargs)

    trainer._run_epoch = run_epoch_unless_finished
    try:
        yield
    finally:
        trainer.__dict__.pop("_run_epoch", None)


def sharding(trainer: Any) -> str:
    """How the trained weights and sequences were laid out across processes, as the trainer actually ran it:
    ``zero-N`` (DeepSpeed), ``fsdp2`` (the model is an FSDPModule: a DTensor shard of every parameter per
    process), ``fsdp1``, ``replicated`` (DDP or one process); ``+ ulysses-spN`` / ``+ ring-cpN`` when each
    sequence was split over N processes (DeepSpeed Ulysses / FSDP2 ring attention). Recorded in the metrics so a
    run says what it did, not what its config asked for."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        layout = f"zero-{trainer.accelerator.state.deepspeed_plugin.zero_stage}"
        engine = getattr(trainer, "model_wrapped", None)
        if getattr(engine, "zero_cpu_offload", lambda: False)():
            layout += f" + optimizer offloaded ({type(engine.basic_optimizer).__name__})"
    elif getattr(trainer, "is_fsdp_enabled", False):
        from torch.distributed.fsdp import FSDPModule

        wrapped = getattr(trainer, "model_wrapped", trainer.model)
        layout = "fsdp2" if isinstance(wrapped, FSDPModule) or isinstance(trainer.model, FSDPModule) else "fsdp1"
    else:
        layout = "replicated"
    sp = trainer.get_sp_size() if hasattr(trainer, "get_sp_size") else 1
    cp = trainer.get_cp_size() if hasattr(trainer, "get_cp_size") else 1
    return layout + (f" + ulysses-sp{sp}" if sp > 1 else "") + (f" + ring-cp{cp}" if cp > 1 else "")


class ProgressLine:
    """One readable line per logging step (step, loss, learning rate, tokens/s, ETA) instead of the Trainer's
    raw metric dicts; only the main process prints."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                outer.start, outer.first_step = time.time(), state.global_step

            def on_log(self, args, state, control, logs=None, **kw):
                if not state.is_world_process_zero or not logs or "loss" not in logs:
                    return
                from ..progress import console

                done = state.global_step - outer.first_step
                elapsed = time.time() - outer.start
                eta = (state.max_steps - state.global_step) * elapsed / max(done, 1)
                tok_s = logs.get("train_tokens_per_second")
                console.print(f"train: step {state.global_step}/{state.max_steps} loss {float(logs['loss']):.4f} "
                              f"lr {float(logs.get('learning_rate', 0)):.2e}"
                              + (f" {float(tok_s):,.0f} tok/s" if tok_s else "") + f" ETA {eta:,.0f}s",
                              highlight=False)

        self.callback = _Callback()
        self.start, self.first_step = time.time(), 0


def quiet_progress(trainer: Any) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ProgressLine().callback)


def save_trained(trainer: Any, tokenizer: Any, cfg: StudentConfig, out: Path, sampling=None) -> Path:
    """Write the trained student as a plain model (LoRA merged) with the aligned EOS, from the main process.

    Sharded runs gather the full weights collectively (every rank must call this): ZeRO-3 through
    ``trainer.save_model``, FSDP through accelerate's full state dict, whatever the checkpoints' state-dict type.
    A QLoRA or sharded LoRA adapter is merged into a bf16 reload of the base afterwards."""
    model = trainer.model
    align_eos(model, tokenizer, sampling)
    fsdp = bool(getattr(trainer, "is_fsdp_enabled", False))
    sharded = bool(getattr(trainer, "is_deepspeed_enabled", False)) or fsdp
    peft = is_peft_model(model)
    if fsdp and not peft:
        # trainer.save_model writes nothing under sharded checkpoints (fsdp2.yaml), and under full ones FSDP's
        # float32 master weights as they are (a 70B: 282 GB, a config saying float32) with a tied LM head twice;
        # published as one process publishes instead: in the training precision, tied weights once
        state = trainer.accelerator.get_state_dict(trainer.model)  # collective: the full weights on the main one
        if distributed.is_main_process():
            for tied, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
                if tied in state and source in state:
                    state[tied] = state[source]
            save_model(model, tokenizer, out, state_dict=state, dtype=publish_dtype(cfg))
    elif sharded or (peft and (is_quantized(model) or not cfg.lora.merge)):
        target = out.parent / "adapter" if peft else out
        trainer.save_model(str(target))  # collective: gathers the shards on the main process
        if distributed.is_main_process():
            if peft and cfg.lora.merge:
                if not cfg.base:
                    raise DistillError("merging a sharded/QLoRA adapter needs the student's 'base'", where=str(out))
                from transformers import AutoConfig

                from ..hub_access import loadable_ref
                from .model import apply_config_overrides

                base = loadable_ref(cfg.base)
                base_config = apply_config_overrides(AutoConfig.from_pretrained(base), cfg)
                merge_adapter_folder(base, target, out, config=base_config, tokenizer=tokenizer,
                                     vocab_size=model.get_input_embeddings().weight.shape[0])
            elif peft:
                out = target
            tokenizer.save_pretrained(out)
            model.generation_config.save_pretrained(out)
    elif distributed.is_main_process():
        save_model(model, tokenizer, out, dtype=publish_dtype(cfg))
    trainer.accelerator.wait_for_everyone()
    return out


def plot_loss(history: list[dict[str, Any]], path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set_xlabel("step"), ax.set_ylabel("training loss"), ax.set_title("student SFT loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
