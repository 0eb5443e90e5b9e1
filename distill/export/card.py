"""Writes a Hub-ready folder: weights, tokenizer with chat template, generation config and a model card.

The card uses huggingface_hub's ModelCardData, so the Hub shows the base model, datasets, licence and the eval
results in its widgets. Sampling advice follows the R1 protocol, and the card says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..manifest import redact

CARD_TEMPLATE = """---
{card_data}
---

# {title}

A reasoning model distilled with [r1-distill](https://github.com/) from the teacher `{teacher}` into
{base_text}, by supervised fine-tuning on {n_traces} filtered reasoning traces.{quant_text}

## How to use

Use the R1 protocol: no system prompt, temperature 0.6, top_p 0.95, every instruction in the user turn
(for math: "Please reason step by step, and put your final answer within \\boxed{{}}."). The chat template
pre-fills `<think>\\n`, so the generated text starts inside the reasoning. `generation_config.json` carries
these sampling settings.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{repo_id}")
model = AutoModelForCausalLM.from_pretrained("{repo_id}")
prompt = tok.apply_chat_template([{{"role": "user", "content": "..."}}], add_generation_prompt=True, tokenize=False)
out = model.generate(**tok(prompt, return_tensors="pt", add_special_tokens=False))
```

## Evaluation

{eval_table}

## Training data

{data_text}
"""


def eval_table(results: dict[str, dict[str, Any]]) -> str:
    if not results:
        return "Not evaluated."
    metrics = sorted({k for r in results.values() for k in r if k.startswith(("pass@", "cons@"))},
                     key=lambda m: (m != "pass@1", m))
    head = "| model | benchmark | problems | " + " | ".join(metrics) + " |"
    rows = [head, "|" + "---|" * (3 + len(metrics))]
    for label, r in results.items():
        rows.append(f"| {label} | {r.get('benchmark', '')} | {r.get('problems', '')} | "
                    + " | ".join(str(r.get(m, "")) for m in metrics) + " |")
    return "\n".join(rows)


def write_card(folder: Path, *, repo_id: str, base_model: str | None, teacher: str, licence: str,
               datasets: list[str], n_traces: int, results: dict[str, dict[str, Any]], quantization: str | None,
               data_text: str) -> Path:
    from huggingface_hub import EvalResult, ModelCardData

    eval_results = []
    for label, r in results.items():
        if "pass@1" in r:
            eval_results.append(EvalResult(task_type="text-generation", dataset_type=r.get("benchmark", "eval"),
                                           dataset_name=r.get("benchmark", "eval"), metric_type="pass@1",
                                           metric_value=r["pass@1"], metric_name=f"pass@1 ({label})"))
    data = ModelCardData(license=licence, base_model=base_model if base_model and "/" in base_model else None,
                         datasets=datasets or None, library_name="transformers", pipeline_tag="text-generation",
                         tags=["reasoning", "r1-distill", "distillation"] + ([quantization] if quantization else []),
                         model_name=repo_id, eval_results=eval_results or None)
    base_text = f"the base model `{base_model}`" if base_model else "a student initialised from scratch"
    quant_text = f" Weights are quantized with {quantization}." if quantization else ""
    text = CARD_TEMPLATE.format(card_data=data.to_yaml(), title=repo_id.split("/")[-1], teacher=teacher,
                                base_text=base_text, n_traces=n_traces, quant_text=quant_text, repo_id=repo_id,
                                eval_table=eval_table(results), data_text=data_text)
    path = folder / "README.md"
    path.write_text(redact(text), encoding="utf-8")
    return path


def build_export(model_dir: Path, out_dir: Path, **card_kwargs: Any) -> Path:
    """Copy a saved model into ``out_dir`` (atomically replaced) and add the model card."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp, ignore=shutil.ignore_patterns("checkpoints", "*.tmp"))
    write_card(tmp, **card_kwargs)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
