"""Build the bundled tiny teacher (``teachers/tiny-arith``) from scratch, deterministically, on a CPU.

Why: the pipeline needs a real teacher that runs anywhere (CI, a laptop, no Hub access) and that behaves like a
reasoning model in the ways the pipeline cares about: R1 chat format, a ``<think>`` block, a ``\\boxed{}`` answer,
an EOS after the answer, and *imperfect* accuracy so the correctness filter has something to reject.

What it does (all seeded, so rerunning reproduces the committed weights on the same torch build and thread count):

1. draws train problems with their reference traces from :mod:`distill.tasks.arithmetic`;
2. trains a small byte-level BPE tokenizer on that corpus with the R1 special tokens, ``<think>``/``</think>`` as
   added *non-special* tokens (so they survive ``skip_special_tokens``), and single-digit number tokens (so sums are
   learnable digit by digit);
3. trains a tiny Qwen2 on the traces rendered with :func:`distill.chat_template.render_training_pair`, loss on the
   completion only (which ends with EOS, so the model learns to stop);
4. measures held-out pass@1 when sampling at T=0.6 / top_p=0.95 and saves model, tokenizer (with the chat
   template), generation config and ``build_info.json``.

Usage::

    python teachers/build_tiny_teacher.py [--out teachers/tiny-arith] [--steps N]

The helpers (tokenizer training, completion-only batches, the training loop, batched sampling and scoring) are
reused by ``teachers/check_student_feasibility.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from distill.chat_template import (ADDED_TOKENS, BOS, EOS, MATH_SUFFIX, PAD, R1_CHAT_TEMPLATE,  # noqa: E402
                                   SPECIAL_TOKENS, THINK_CLOSE, render_training_pair, user_message)
from distill.records import Prompt  # noqa: E402
from distill.tasks import arithmetic  # noqa: E402

SEED = 1234
NUM_THREADS = 2

# Teacher size: ~1M parameters, head_dim 32 (a head size every inference engine supports).
TEACHER_CONFIG = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=4)
TRAIN = dict(n_train=20000, steps=500, batch_size=32, lr=3e-3, warmup=100, weight_decay=0.1)
N_EVAL = 200
SAMPLING = dict(do_sample=True, temperature=0.6, top_p=0.95, max_new_tokens=160)
VOCAB_SIZE = 512


# --- tokenizer -----------------------------------------------------------------------------------------------

def corpus_texts(examples: Sequence[tuple[Prompt, str, str]]) -> list[str]:
    """Plain text the tokenizer learns merges from (no special or think tokens: those are added whole)."""
    out = []
    for prompt, reasoning, answer in examples:
        out.append(user_message(prompt.problem))
        out.append(f"{reasoning}\n\n{answer}")
    return out


def train_tokenizer(texts: Sequence[str], vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE with one token per digit, served through Qwen2's pipeline, wrapped with the R1 template.

    - Merges are learned with digits isolated before a GPT-2-style byte-level split, so ``12`` and ``17`` share
      structure and carries are learnable; byte-level means every string (newlines, backslashes, unseen characters)
      round-trips exactly.
    - The saved pipeline (normalizer, pre-tokenizer, decoder) is Qwen2's own: transformers 5 loads any ``qwen2``
      checkpoint's tokenizer through ``Qwen2Tokenizer``, which rebuilds the pipeline from vocab and merges with its
      regex (which also isolates digits) and NFC. Saving that same pipeline makes ``tokenizer.json``,
      ``AutoTokenizer`` and any other consumer agree. This function checks that both pipelines encode the whole
      corpus to the same ids, so the committed weights do not depend on which one a consumer uses.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])

    learned = [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    served = [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]
    if learned != served:
        raise AssertionError("Qwen2's pre-tokenizer encodes the corpus differently from the one the merges "
                             "were learned with")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                 model_max_length=512, clean_up_tokenization_spaces=False)
    hf.chat_template = R1_CHAT_TEMPLATE
    return hf


def save_tokenizer(tokenizer, out: Path):
    """Save, then reload the way every consumer will (``AutoTokenizer``) and return the reloaded tokenizer.

    ``tokenizer_config.json`` names ``Qwen2Tokenizer`` (what transformers 5 uses for qwen2 anyway) and sets
    ``unk_token`` to null: otherwise ``Qwen2Tokenizer`` adds its default ``<|endoftext|>`` as an extra token, one
    past the model's vocabulary.
    """
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(tokenizer_class="Qwen2Tokenizer", unk_token=None)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    reloaded = AutoTokenizer.from_pretrained(out)
    if len(reloaded) != len(tokenizer) or reloaded.get_vocab() != tokenizer.get_vocab():
        raise AssertionError(f"reloaded tokenizer differs: {len(reloaded)} vs {len(tokenizer)} tokens")
    return reloaded


def check_round_trip(tokenizer, texts: Sequence[str], reference=None) -> None:
    """The rendered training text must decode back to itself exactly (newlines, ``\\boxed{}``, special tokens),
    and, given a ``reference`` tokenizer, encode to the same ids."""
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if reference is not None and ids != reference.encode(text, add_special_tokens=False):
            raise AssertionError(f"tokenizers disagree on {text!r}")
        back = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if back != text:
            raise AssertionError(f"tokenizer round trip failed:\n{text!r}\n{back!r}")
    for t in ADDED_TOKENS:
        ids = tokenizer.encode(t, add_special_tokens=False)
        if len(ids) != 1 or tokenizer.decode(ids, skip_special_tokens=True) != t:
            raise AssertionError(f"{t!r} must be one non-special token that survives skip_special_tokens")
    digits = tokenizer.tokenize("1234")
    if len(digits) != 4:
        raise AssertionError(f"digits must be one token each, got {digits}")


# --- model ---------------------------------------------------------------------------------------------------

def make_model(tokenizer, seed: int, **sizes):
    """A randomly initialised tiny Qwen2 whose special ids match the tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer), max_position_embeddings=512, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, use_cache=True, **sizes,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --- data ----------------------------------------------------------------------------------------------------

def encode_pairs(tokenizer, samples: Sequence[tuple[str, str, str]]) -> list[tuple[list[int], list[int]]]:
    """(problem, reasoning, answer) -> (prompt ids, completion ids), rendered with the pipeline's own template code.

    Prompt and completion are tokenized separately, exactly as at inference time (the model sees the tokenized
    prompt and produces completion tokens); the completion ends with the EOS token.
    """
    out = []
    for problem, reasoning, answer in samples:
        prompt, completion = render_training_pair(tokenizer, problem, reasoning, answer)
        p = tokenizer.encode(prompt, add_special_tokens=False)
        c = tokenizer.encode(completion, add_special_tokens=False)
        assert c[-1] == tokenizer.eos_token_id
        out.append((p, c))
    return out


def collate(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded batch with labels only on completion tokens (-100 on prompt and padding)."""
    width = max(len(p) + len(c) for p, c in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (p, c) in enumerate(pairs):
        seq = p + c
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, len(p):len(seq)] = torch.tensor(c)
        mask[i, :len(seq)] = 1
    return ids, mask, labels


def train(model, pairs: Sequence[tuple[list[int], list[int]]], *, steps: int, batch_size: int, lr: float,
          warmup: int, weight_decay: float, seed: int, pad_id: int, time_limit_s: float | None = None,
          log: Callable[[str], None] = print, log_every: int = 100) -> dict:
    """Plain AdamW + linear warmup + cosine decay, completion-only loss. Returns steps done and final loss.

    ``time_limit_s`` stops early (the cosine schedule is still laid out over ``steps``), so a check can promise a
    wall-clock budget.
    """
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    rng = random.Random(seed)
    order: list[int] = []
    t0 = time.time()
    ema = None
    done = 0
    for step in range(steps):
        if len(order) < batch_size:
            more = list(range(len(pairs)))
            rng.shuffle(more)
            order += more
        batch, order = order[:batch_size], order[batch_size:]
        ids, mask, labels = collate([pairs[i] for i in batch], pad_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        done = step + 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if done % log_every == 0 or done == steps:
            log(f"step {done}/{steps} loss {ema:.4f} lr {sched.get_last_lr()[0]:.2e} {time.time() - t0:.0f}s")
        if time_limit_s is not None and time.time() - t0 > time_limit_s:
            log(f"time limit reached at step {done}")
            break
    model.eval()
    return {"steps": done, "loss": ema, "train_time_s": round(time.time() - t0, 1)}


# --- sampling and scoring ------------------------------------------------------------------------------------

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_answer(completion: str) -> str | None:
    """The last ``\\boxed{...}`` after ``</think>``; None when the think block is not closed or nothing is boxed."""
    if THINK_CLOSE not in completion:
        return None
    found = _BOXED.findall(completion.split(THINK_CLOSE, 1)[1])
    return found[-1].strip() if found else None


@torch.no_grad()
def sample(model, tokenizer, problems: Sequence[str], *, seed: int, batch_size: int = 64,
           **sampling) -> list[dict]:
    """Sample one completion per problem with the R1 prompt (ends in ``<think>\\n``), batched with left padding.

    Returns dicts with the decoded completion (special tokens skipped) and whether it stopped on EOS.
    """
    opts = {**SAMPLING, **sampling}
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    out = []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": user_message(p)}], tokenize=False,
                                               add_generation_prompt=True) for p in chunk]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(**enc, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             **opts)
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            stopped = tokenizer.eos_token_id in row
            if stopped:
                row = row[:row.index(tokenizer.eos_token_id) + 1]
            else:
                row = [t for t in row if t != tokenizer.pad_token_id]
            out.append({"completion": tokenizer.decode(row, skip_special_tokens=True),
                        "stopped": stopped, "tokens": len(row)})
    return out


def score(prompts: Sequence[Prompt], samples: Sequence[dict]) -> dict:
    """pass@1 (one sample per prompt) and how many samples stopped on EOS."""
    correct = [extract_answer(s["completion"]) == p.answer for p, s in zip(prompts, samples)]
    for s, ok in zip(samples, correct):
        s["correct"] = ok
    n = len(prompts)
    return {"n": n, "pass@1": round(sum(correct) / n, 4), "correct": sum(correct),
            "stopped_eos": sum(s["stopped"] for s in samples)}


# --- build ---------------------------------------------------------------------------------------------------

def save_model(model, tokenizer, out: Path, info: dict) -> None:
    """Weights, the generation config the pipeline samples with (R1's T=0.6 / top_p=0.95), and build_info.json."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=SAMPLING["temperature"],
        top_p=SAMPLING["top_p"], max_new_tokens=SAMPLING["max_new_tokens"])
    model.save_pretrained(out)
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "teachers" / "tiny-arith"))
    ap.add_argument("--steps", type=int, default=TRAIN["steps"])
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--n-eval", type=int, default=N_EVAL)
    args = ap.parse_args(argv)
    torch.set_num_threads(NUM_THREADS)
    t_start = time.time()
    out = Path(args.out)
    # Build next to the destination and swap at the end, so a crash never leaves a tokenizer and weights that
    # do not belong together.
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)

    examples = arithmetic.make_examples("train", TRAIN["n_train"], seed=args.seed)
    trained_tok = train_tokenizer(corpus_texts(examples))
    tokenizer = save_tokenizer(trained_tok, tmp)
    print(f"tokenizer: {len(tokenizer)} tokens ({type(tokenizer).__name__} after reload)")
    rendered = [p + c for p, c in (render_training_pair(tokenizer, ex[0].problem, ex[1], ex[2])
                                   for ex in examples[:500])]
    check_round_trip(tokenizer, rendered, reference=trained_tok)

    pairs = encode_pairs(tokenizer, [(p.problem, r, a) for p, r, a in examples])
    lens = [len(p) + len(c) for p, c in pairs]
    print(f"{len(pairs)} train pairs, tokens/pair mean {sum(lens) / len(lens):.0f} max {max(lens)}")

    model = make_model(tokenizer, args.seed, **TEACHER_CONFIG)
    print(f"teacher: {n_params(model):,} parameters")
    hp = {k: v for k, v in TRAIN.items() if k != "n_train"} | {"steps": args.steps}
    stats = train(model, pairs, seed=args.seed, pad_id=tokenizer.pad_token_id, **hp)

    heldout = arithmetic.make_problems("heldout", args.n_eval, seed=args.seed)
    t0 = time.time()
    samples = sample(model, tokenizer, [p.problem for p in heldout], seed=args.seed)
    result = score(heldout, samples)
    print(f"held-out at T={SAMPLING['temperature']}: {result} ({time.time() - t0:.0f}s)")

    info = {
        "task": arithmetic.SOURCE, "seed": args.seed, "torch": torch.__version__, "threads": NUM_THREADS,
        "n_train_problems": TRAIN["n_train"], "train": hp | {"steps_done": stats["steps"]},
        "final_loss": round(stats["loss"], 4), "train_time_s": stats["train_time_s"],
        "params": n_params(model), "model": TEACHER_CONFIG, "vocab_size": len(tokenizer),
        "heldout_eval": {"n_problems": args.n_eval, "problems_seed": args.seed, "sampling_seed": args.seed,
                         "sampling": SAMPLING, **result},
        "build_time_s": round(time.time() - t_start, 1),
    }
    save_model(model, tokenizer, tmp, info)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
