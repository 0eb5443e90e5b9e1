"""Tiny-arith: a synthetic, verifiable word-problem task small enough for a CPU-sized teacher and student.

Why it exists: the bundled tiny teacher (``teachers/tiny-arith``) is trained on this task so that the whole
distillation pipeline (generate -> verify -> SFT -> evaluate) runs for real on a laptop in minutes. The task is
chosen so that

- answers are exactly checkable (an integer in ``\\boxed{}``), so the correctness filter does real work;
- a ~1M-parameter model gets it *mostly* right, but not always: a filter that keeps only correct traces matters;
- a model several times smaller can learn it from a few hundred teacher traces, so distillation visibly works.

A problem is a start amount followed by 2-4 operations (add, take away, double)::

    Mia has 7 apples. She buys 5 more, then gives away 4. How many apples does Mia have now?

and its reference reasoning restates each operation before doing it, one line per step::

    Mia starts with 7 apples.
    She buys 5 more: 7 + 5 = 12.
    She gives away 4: 12 - 4 = 8.
    So Mia has 8 apples.

followed by the visible answer ``The answer is \\boxed{8}.``. Restating the operation makes each step a local
copy-then-compute pattern (find the phrase after the one just restated, then do one small sum), which is what lets
a two-layer student learn it.

Train and held-out problems never overlap: a problem's split is a pure function of a SHA-256 hash of its
arithmetic (start amount and the sequence of operations with their operands), so two problems that differ only in
names, items or verbs always land in the same split, and no held-out computation is ever seen in training.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from ..records import Prompt

SOURCE = "tiny-arith"
SPLITS = ("train", "heldout")
HELDOUT_BUCKETS = 2  # out of 10: 20% of all arithmetic goes to held-out

NAMES = [("Mia", "She"), ("Leo", "He"), ("Ava", "She"), ("Sam", "He"), ("Zoe", "She"), ("Max", "He"),
         ("Lily", "She"), ("Ben", "He"), ("Emma", "She"), ("Noah", "He"), ("Ella", "She"), ("Jack", "He")]
ITEMS = ["apples", "pencils", "marbles", "stickers", "cookies", "books", "coins", "shells", "cards", "stamps"]

# Verb phrases per operation kind; "{n}" is the operand. The arithmetic symbol of each kind is in OP_SYMBOL.
VERBS = {
    "add": ["buys {n} more", "finds {n} more", "gets {n} more", "wins {n} more"],
    "sub": ["gives away {n}", "loses {n}", "sells {n}", "uses {n}"],
    "mul": ["doubles them"],
}
OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}

# Difficulty knobs (the teacher's accuracy was tuned with these; changing them changes the bundled teacher).
START_RANGE = (2, 20)
OPERAND_RANGE = (1, 9)
MAX_TOTAL = 40          # no running total exceeds this
MAX_DOUBLE_FROM = 15    # "doubles them" only from a total <= this
N_OPS_RANGE = (2, 4)
P_DOUBLE = 0.15


@dataclass(frozen=True)
class Step:
    kind: str      # "add" | "sub" | "mul"
    operand: int   # for "mul" always 2
    verb: int      # index into VERBS[kind]


@dataclass(frozen=True)
class Spec:
    """Everything that determines one problem; the text, reasoning and answer are all rendered from it."""
    name: int
    item: int
    start: int
    steps: tuple[Step, ...]

    def arithmetic_key(self) -> str:
        """Canonical arithmetic content (no surface words): what the train/held-out split is decided on."""
        return f"{self.start}|" + ";".join(f"{s.kind}{s.operand}" for s in self.steps)

    def totals(self) -> list[int]:
        out, total = [], self.start
        for s in self.steps:
            total = apply(s.kind, total, s.operand)
            out.append(total)
        return out


def apply(kind: str, total: int, operand: int) -> int:
    if kind == "add":
        return total + operand
    if kind == "sub":
        return total - operand
    if kind == "mul":
        return total * operand
    raise ValueError(f"unknown operation {kind!r}")


def split_of(spec: Spec) -> str:
    """Stable split assignment: SHA-256 of the arithmetic key (never Python's salted ``hash()``)."""
    digest = hashlib.sha256(f"{SOURCE}:{spec.arithmetic_key()}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % 10 < HELDOUT_BUCKETS else "train"


# --- rendering -----------------------------------------------------------------------------------------------

def _verb_phrase(step: Step) -> str:
    return VERBS[step.kind][step.verb].format(n=step.operand)


def render_problem(spec: Spec) -> str:
    name, pron = NAMES[spec.name]
    item = ITEMS[spec.item]
    actions = ", then ".join(_verb_phrase(s) for s in spec.steps)
    return f"{name} has {spec.start} {item}. {pron} {actions}. How many {item} does {name} have now?"


def render_solution(spec: Spec) -> tuple[str, str]:
    """(reasoning, answer_text): the ground-truth trace the teacher is trained on."""
    name, pron = NAMES[spec.name]
    item = ITEMS[spec.item]
    lines = [f"{name} starts with {spec.start} {item}."]
    total = spec.start
    for step in spec.steps:
        new = apply(step.kind, total, step.operand)
        lines.append(f"{pron} {_verb_phrase(step)}: {total} {OP_SYMBOL[step.kind]} {step.operand} = {new}.")
        total = new
    lines.append(f"So {name} has {total} {item}.")
    return "\n".join(lines), answer_text(total)


def answer_text(value: int | str) -> str:
    return f"The answer is \\boxed{{{value}}}."


# --- parsing (so a Prompt alone is enough to rebuild its reference trace) ------------------------------------

_PROBLEM_RE = re.compile(r"^(\w+) has (\d+) (\w+)\. (She|He) (.+)\. How many (\w+) does (\w+) have now\?$")
_VERB_RES = [(kind, i, re.compile("^" + re.escape(v).replace(re.escape("{n}"), r"(\d+)") + "$"))
             for kind, verbs in VERBS.items() for i, v in enumerate(verbs)]


def parse_problem(text: str) -> Spec:
    """Invert :func:`render_problem`. Raises ValueError on text this module did not produce."""
    m = _PROBLEM_RE.match(text.strip())
    if not m or m.group(1) != m.group(7) or m.group(3) != m.group(6):
        raise ValueError(f"not a tiny-arith problem: {text!r}")
    names = [n for n, _ in NAMES]
    if m.group(1) not in names or m.group(3) not in ITEMS:
        raise ValueError(f"unknown name or item in {text!r}")
    steps = []
    for phrase in m.group(5).split(", then "):
        for kind, i, rx in _VERB_RES:
            vm = rx.match(phrase)
            if vm:
                steps.append(Step(kind, int(vm.group(1)) if vm.groups() else 2, i))
                break
        else:
            raise ValueError(f"unknown operation {phrase!r} in {text!r}")
    return Spec(names.index(m.group(1)), ITEMS.index(m.group(3)), int(m.group(2)), tuple(steps))


# --- sampling ------------------------------------------------------------------------------------------------

def random_spec(rng: random.Random) -> Spec:
    """Draw one problem; every running total stays within [0, MAX_TOTAL]."""
    start = rng.randint(*START_RANGE)
    total, steps = start, []
    for _ in range(rng.randint(*N_OPS_RANGE)):
        choices = []
        if total <= MAX_DOUBLE_FROM and total > 0 and rng.random() < P_DOUBLE:
            choices = ["mul"]
        else:
            if total + OPERAND_RANGE[0] <= MAX_TOTAL:
                choices.append("add")
            if total - OPERAND_RANGE[0] >= 0:
                choices.append("sub")
        kind = rng.choice(choices)
        if kind == "mul":
            operand = 2
        elif kind == "add":
            operand = rng.randint(OPERAND_RANGE[0], min(OPERAND_RANGE[1], MAX_TOTAL - total))
        else:
            operand = rng.randint(OPERAND_RANGE[0], min(OPERAND_RANGE[1], total))
        steps.append(Step(kind, operand, rng.randrange(len(VERBS[kind]))))
        total = apply(kind, total, operand)
    return Spec(rng.randrange(len(NAMES)), rng.randrange(len(ITEMS)), start, tuple(steps))


def _prompt(spec: Spec, split: str) -> Prompt:
    text = render_problem(spec)
    pid = f"{SOURCE}-{split}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    return Prompt(id=pid, problem=text, answer=str(spec.totals()[-1]), domain="math", source=SOURCE, split=split)


def make_specs(split: str, n: int, seed: int = 0) -> list[Spec]:
    """``n`` distinct problems of ``split``, deterministic in ``seed`` (rejection-sampled by :func:`split_of`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"{SOURCE}:{split}:{seed}")
    seen: set[str] = set()
    out: list[Spec] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct {split} problems")
        spec = random_spec(rng)
        if split_of(spec) != split:
            continue
        text = render_problem(spec)
        if text in seen:
            continue
        seen.add(text)
        out.append(spec)
    return out


def make_problems(split: str, n: int, seed: int = 0) -> list[Prompt]:
    """``n`` distinct problems of ``split`` ("train" or "heldout"), deterministic in ``seed``.

    IDs are ``tiny-arith-<split>-<sha256(problem text)[:12]>``: the same problem gets the same id whatever the seed
    or position, so stores built from different draws agree on ids.
    """
    return [_prompt(spec, split) for spec in make_specs(split, n, seed)]


def make_examples(split: str, n: int, seed: int = 0) -> list[tuple[Prompt, str, str]]:
    """Problems with their reference trace: ``(prompt, reasoning, answer_text)``; the teacher's training data."""
    return [(_prompt(spec, split), *render_solution(spec)) for spec in make_specs(split, n, seed)]


def reference_solution(problem: Prompt | str) -> tuple[str, str]:
    """(reasoning, answer_text) for a problem made by this module, rebuilt by parsing its text."""
    text = problem.problem if isinstance(problem, Prompt) else problem
    return render_solution(parse_problem(text))


__all__ = ["make_problems", "make_examples", "reference_solution", "parse_problem", "split_of", "answer_text",
           "render_problem", "render_solution", "Spec", "Step"]
