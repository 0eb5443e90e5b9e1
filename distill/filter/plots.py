"""The filter stage's picture: why samples were rejected, how long kept and rejected samples are, how hard the
prompts were. One PNG (``filter_report.png``) next to the verdicts, drawn with matplotlib's Agg backend (no display).

Why these three: the reasons chart shows which check does the work (a sudden wall of ``language_mixing`` means a
threshold is off); the length histograms show whether filtering biases the data towards short traces; the pass-rate
histogram is the difficulty profile a curriculum or a hard-prompt selection would start from. The inputs are
counters (token count -> samples), never the samples, so drawing costs no memory at any scale.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable


def _expand(hist: Counter, bins: list[float]) -> list[int]:
    counts = [0] * (len(bins) - 1)
    for value, n in hist.items():
        for i in range(len(bins) - 1):
            if value < bins[i + 1] or i == len(bins) - 2:
                counts[i] += n
                break
    return counts


def draw_report(path: str | Path, rejected: dict[str, int], kept: int, kept_tokens: Counter,
                rejected_tokens: Counter, pass_rates: Iterable[float]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.8))
    names = ["kept"] + list(rejected)
    values = [kept] + list(rejected.values())
    ax1.barh(names, values, color=["#2a7"] + ["#c44"] * len(rejected))
    ax1.invert_yaxis()
    ax1.set_title(f"samples by outcome ({kept + sum(rejected.values())} in all)")
    ax1.set_xlabel("samples")

    all_tokens = list(kept_tokens) + list(rejected_tokens)
    if all_tokens:
        lo, hi = min(all_tokens), max(all_tokens)
        nbins = min(40, hi - lo + 1)
        step = (hi - lo + 1) / nbins
        bins = [lo + i * step for i in range(nbins + 1)]
        centres = [(a + b) / 2 for a, b in zip(bins, bins[1:])]
        width = step * 0.9
        ax2.bar(centres, _expand(kept_tokens, bins), width=width, alpha=0.6, color="#2a7", label="kept")
        ax2.bar(centres, _expand(rejected_tokens, bins), width=width, alpha=0.6, color="#c44", label="rejected")
        ax2.legend()
    ax2.set_title("completion length")
    ax2.set_xlabel("completion tokens")
    ax2.set_ylabel("samples")

    rates = list(pass_rates)
    ax3.hist(rates, bins=[i / 10 for i in range(11)], color="#47a", edgecolor="white")
    ax3.set_title(f"pass rate per prompt ({len(rates)} prompts)")
    ax3.set_xlabel("correct samples / samples")
    ax3.set_ylabel("prompts")

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path
