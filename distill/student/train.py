"""SFT of the student on the kept traces with TRL's SFTTrainer, loss on the completion only.

Each kept verdict becomes a (prompt, completion) pair rendered through the chat template by
:func:`distill.chat_template.render_training_pair`, which refuses templates that would drop the reasoning. The
completion ends with EOS, so the student learns to stop. Checkpoints are saved every ``save_steps`` and a rerun
resumes from the last one.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ..chat_template import render_training_pair
from ..config import StudentConfig
from ..errors import DistillError
from ..records import ShardedJsonlStore
from .model import align_eos, save_model


def training_pairs(kept_dir: str | Path, tokenizer: Any) -> list[dict[str, str]]:
    rows = []
    for rec in ShardedJsonlStore(kept_dir):
        missing = [k for k in ("problem", "reasoning", "answer") if not rec.get(k)]
        if missing:
            raise DistillError(f"record {rec.get('id')} lacks {', '.join(missing)}", where=str(kept_dir))
        prompt, completion = render_training_pair(tokenizer, rec["problem"], rec["reasoning"], rec["answer"])
        rows.append({"prompt": prompt, "completion": completion})
    if not rows:
        raise DistillError("no kept traces to train on", where=str(kept_dir))
    return rows


def train_student(model: Any, tokenizer: Any, cfg: StudentConfig, kept_dir: str | Path, out_dir: str | Path,
                  sampling=None) -> dict[str, Any]:
    """Train and save to ``out_dir/model``; returns metrics (loss, steps, tokens/s, seconds)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    out_dir = Path(out_dir)
    rows = training_pairs(kept_dir, tokenizer)
    dataset = Dataset.from_list(rows)
    args = SFTConfig(
        output_dir=str(out_dir / "checkpoints"), learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio in transformers 5
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps, per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, max_length=t.max_length,
        max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay, packing=t.packing,
        gradient_checkpointing=t.gradient_checkpointing, bf16=t.bf16, logging_steps=t.logging_steps, seed=t.seed,
        completion_only_loss=True, eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token,
        report_to="none", save_strategy="steps", save_steps=200, save_total_limit=1, save_only_model=False,
        use_cpu=not torch.cuda.is_available(), dataset_num_proc=None, disable_tqdm=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        checkpoints = sorted((out_dir / "checkpoints").glob("checkpoint-*"))
        start = time.time()
        result = trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
        seconds = time.time() - start
    align_eos(trainer.model, tokenizer, sampling)
    save_model(trainer.model, tokenizer, out_dir / "model")
    history = [h for h in trainer.state.log_history if "loss" in h]
    tokens = sum(len(tokenizer(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"]) for r in rows)
    plot_loss(history, out_dir / "loss.png")
    return {"examples": len(rows), "steps": trainer.state.global_step, "train_loss": round(result.training_loss, 4),
            "final_loss": history[-1]["loss"] if history else None, "seconds": round(seconds, 1),
            "tokens_per_s": round(tokens * t.num_train_epochs / max(seconds, 1e-6)) if t.max_steps < 0 else None,
            "loss_curve": [(h["step"], h["loss"]) for h in history]}


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
