"""The run's report card: ``report.json``, a printed table and ``report.png`` (pass@1 per model, rejections)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from .config import ResolvedRecipe
from .manifest import read_json
from .progress import console

MODELS = ("teacher", "student_untrained", "student", "student_quantized", "student_unfiltered")


def build_report(recipe: ResolvedRecipe, run: Path, seconds: dict[str, float]) -> dict[str, Any]:
    eval_results = read_json(run / "eval" / "manifest.json")["results"]
    filt = read_json(run / "filtered" / "manifest.json")["counts"]
    train = read_json(run / "student" / "manifest.json")
    export = read_json(run / "export" / "manifest.json")
    report: dict[str, Any] = {"recipe": recipe.name, "run_dir": str(run)}
    for label in MODELS:
        if label in eval_results:
            bench_results = eval_results[label]
            first = next(iter(bench_results.values()))
            report[label] = {**{k: v for k, v in first.items() if k not in ("model",)},
                             "benchmarks": bench_results}
    report["filter"] = {k: filt[k] for k in ("generated", "kept", "rejected")}
    report["train"] = {k: train["metrics"].get(k) for k in ("examples", "steps", "final_loss", "seconds")}
    report["train"]["parameters"] = train["counts"]["parameters"]
    report["stages"] = seconds
    report["total_seconds"] = round(sum(seconds.values()), 1)
    report["export_dir"] = export["folders"]["student"]
    report["export_dirs"] = export["folders"]
    plot_report(report, run / "report.png")
    return report


def print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"r1-distill report: {report['recipe']}")
    for col in ("model", "pass@1", "cons@k", "stopped"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for label in MODELS:
        r = report.get(label)
        if not r:
            continue
        cons = next((v for k, v in r.items() if k.startswith("cons@")), "")
        table.add_row(label, f"{r['pass@1']:.1f}", f"{cons}", f"{100 * r.get('stopped_fraction', 0):.0f}%")
    console.print(table)
    f = report["filter"]
    reasons = ", ".join(f"{k}: {v}" for k, v in f["rejected"].items()) or "none"
    console.print(f"filter: {f['generated']} generated, {f['kept']} kept; rejected by reason: {reasons}")
    console.print("stages (s): " + ", ".join(f"{k} {v}" for k, v in report["stages"].items())
                  + f"; total {report['total_seconds']}")
    console.print(f"export: {report['export_dir']}")


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [m for m in MODELS if m in report]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.bar(labels, [report[m]["pass@1"] for m in labels], color=["#555", "#bbb", "#2a7", "#7a2", "#c84"][:len(labels)])
    ax1.set_ylabel("pass@1 (%)"), ax1.set_title("held-out pass@1"), ax1.set_ylim(0, 100)
    ax1.tick_params(axis="x", rotation=20)
    rej = report["filter"]["rejected"]
    names = ["kept"] + list(rej)
    ax2.barh(names, [report["filter"]["kept"]] + list(rej.values()), color=["#2a7"] + ["#c44"] * len(rej))
    ax2.set_title(f"filter: {report['filter']['generated']} samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
