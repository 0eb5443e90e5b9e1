"""Builds the student: a base model (Qwen2.5, Llama) by id or path, or a fresh one from an architecture config.

The same code path serves both: at tiny scale the demo initialises from a config; at full scale a recipe names a
base such as ``Qwen/Qwen2.5-Math-7B``. Either way the tokenizer, chat template, EOS and generation config are made
to agree, because a student whose EOS disagrees with its template never stops (REFERENCE.md pitfall 1): a base
whose tokenizer lacks the R1 format gets it installed (distill/student/template.py).

Config overrides (``rope_theta``, ``max_position_embeddings``) are applied to the loaded config before the
weights load, as the open R1-Distill-Qwen-7B reproduction did to train Qwen2.5-Math (4k native context) at 32k.
Attention backend, dtype and QLoRA quantisation are resolved for the machine at hand (efficiency.py, lora.py).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig,
                          Qwen2Config)

from ..config import SamplingConfig, StudentConfig
from ..errors import DistillError, first_line
from ..hub_access import loadable_ref
from .distributed import check_gpus, launcher_kind, receives_weights_from_main
from .efficiency import resolve_attn_implementation, resolve_bf16, resolve_padding_free
from .lora import is_peft_model, is_quantized, merge_lora, quantization_config
from .memory import GiB, preflight
from .template import align_special_ids, prepare_chat_format

ARCHITECTURES = {"qwen2": (Qwen2Config, "Qwen2ForCausalLM"), "llama": (LlamaConfig, "LlamaForCausalLM")}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")


def folder_problem(folder: str | Path, part: str) -> str | None:
    """What is visibly wrong with a local model folder for loading its ``part`` (``tokenizer``, ``config`` or
    ``weights``), read from the files (a JSON parse, the safetensors headers); None when nothing is. Asked after a
    loader failed, its answer replaces the loader's message (a five-line ValueError that does not name the folder,
    a SafetensorError that names no file), and before a GKD teacher loads (gkd.check_teacher)."""
    folder = Path(folder)
    if not folder.exists():
        return "no such folder"
    if not folder.is_dir():
        return "is a file, not a model folder"
    if not any(folder.iterdir()):
        return "the folder is empty"
    if part == "tokenizer" and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return f"no tokenizer in the folder ({', '.join(TOKENIZER_FILES)})"
    if part != "tokenizer" and (folder / "adapter_config.json").is_file():
        return None  # a PEFT adapter folder: its base is named inside, PEFT loads it
    if part != "tokenizer" and not (folder / "config.json").is_file():
        return "no config.json in the folder"
    names = ("config.json",) + (("tokenizer_config.json", "tokenizer.json") if part == "tokenizer" else ())
    for name in names:
        if (folder / name).is_file():
            try:
                json.loads((folder / name).read_text(encoding="utf-8"))
            except (ValueError, OSError) as exc:
                return f"{name} is not valid JSON ({first_line(exc, 120)})"
    if part == "weights":
        if not any(any(folder.glob(pattern)) for pattern in WEIGHT_FILES):
            return "no weights in the folder (model.safetensors or pytorch_model.bin)"
        from safetensors import safe_open

        for path in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(path), "pt"):
                    pass
            except Exception as exc:  # noqa: BLE001 - SafetensorError (a bare Exception subclass), OSError
                return f"{path.name} is corrupt or cut short ({first_line(exc, 120)})"
    return None


# What a loader raises on a folder it cannot read: missing or malformed files (OSError, ValueError, json), a weights
# file cut short (safetensors' SafetensorError), weights of another shape (RuntimeError), odd config fields.
LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, TypeError, RuntimeError)


def is_load_error(exc: BaseException) -> bool:
    """A loader's failure on bad files (see LOAD_ERRORS), not out-of-memory or one of our own errors."""
    from safetensors import SafetensorError

    if isinstance(exc, (DistillError, torch.OutOfMemoryError)):
        return False
    return isinstance(exc, LOAD_ERRORS + (SafetensorError,))


def load_failure(exc: BaseException, ref: str, what: str, part: str) -> DistillError:
    """One line for a model reference ``ref`` (a local folder or a Hub id) that failed to load ``what``: for a
    folder, what is wrong with its files (:func:`folder_problem`) where that can be seen, else the loader's first
    line; for a Hub id the loader's first line, with the offline hint when the Hub is out of reach."""
    from ..hub_access import hub_reachable

    local = Path(ref).exists()
    why = (folder_problem(ref, part) if local else None) or first_line(exc)
    hint = "" if local or hub_reachable() else " (offline: only local folders and cached models load)"
    return DistillError(f"cannot load {what}: {why}{hint}", where=ref)


@contextlib.contextmanager
def load_errors(ref: str, what: str, part: str) -> Iterator[None]:
    """Inside the block, a loader's failure on bad files (:func:`is_load_error`) becomes :func:`load_failure`'s one
    line naming ``ref``; anything else (out of memory, our own errors) passes unchanged."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - sorted by is_load_error
        if not is_load_error(exc):
            raise
        raise load_failure(exc, ref, what, part) from None


def load_tokenizer(ref: str, what: str = "tokenizer"):
    resolved = loadable_ref(ref)
    with load_errors(resolved, what, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(resolved)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def apply_config_overrides(config: Any, cfg: StudentConfig) -> Any:
    """Set the recipe's RoPE theta and context length on a model config (in place; returned for chaining).

    transformers 5 keeps theta in ``config.rope_parameters``; other keys there (Llama 3's ``rope_type: llama3``
    scaling factors) are kept."""
    if cfg.rope_theta is not None:
        params = dict(getattr(config, "rope_parameters", None) or {})
        params.setdefault("rope_type", "default")
        params["rope_theta"] = float(cfg.rope_theta)
        config.rope_parameters = params
        if hasattr(config, "rope_theta"):
            config.rope_theta = float(cfg.rope_theta)
    if cfg.max_position_embeddings is not None:
        config.max_position_embeddings = cfg.max_position_embeddings
    return config


def weights_dtype(cfg: StudentConfig, launcher: str | None = None) -> torch.dtype:
    """The dtype the student's weights load in. ``auto``: float32 master weights for a full fine-tune, also when
    training in bf16 (the Trainer's autocast runs the matmuls in bf16); bf16 weights only where something else
    keeps the precision: LoRA/QLoRA (the base is frozen, PEFT keeps the adapters in float32) and DeepSpeed (its
    ZeRO optimizer holds float32 master copies of bf16 weights).

    Why: with bf16 weights and a plain optimizer every update is rounded to bf16's 8 mantissa bits, and updates
    smaller than ~1/256 of a weight vanish. Measured on an H200 (benchmarks/gpu_check.sh, the demo student, same
    recipe, 1,000 steps): bf16 weights ended at loss 0.133 and pass@1 19.9; float32 weights with bf16 autocast at
    0.085, as on the CPU (0.085, pass@1 91.4)."""
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if not resolve_bf16(cfg.train.bf16):
        return torch.float32
    launcher = launcher or launcher_kind()
    return torch.bfloat16 if cfg.lora.enabled or launcher == "deepspeed" else torch.float32


def empty_model(config: Any, dtype: torch.dtype, attn: str) -> Any:
    """The model of ``config`` with its parameters on the meta device (no memory, no values) and its buffers
    (RoPE frequencies, which nobody sends) computed here: what a process that receives its weights from the main
    one builds instead of reading the checkpoint (distributed.receives_weights_from_main). ``allocate_unwritten``
    gives the parameters storage once the embeddings have their final size."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    model.tie_weights()  # from_pretrained ties; from_config on meta leaves lm_head apart (accelerate then fails)
    return model


def allocate_unwritten(model: Any) -> None:
    """Give every meta parameter of ``model`` host storage that is never written (``torch.empty``), tied weights
    staying one tensor. Unwritten pages are not resident, so this costs address space, not memory.

    Why not leave them on meta: accelerate's FSDP2 prepare finds each optimizer parameter's shard by ``data_ptr``,
    which is 0 for every meta tensor, so a meta model's optimizer ended up stepping the wrong shards (measured: the
    loss left the one-process curve at step 2, 5.52 against 5.83, and saving the optimizer failed with KeyError)."""
    replaced: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                if id(param) not in replaced:
                    replaced[id(param)] = torch.nn.Parameter(torch.empty_like(param, device="cpu"),
                                                             requires_grad=param.requires_grad)
                module._parameters[name] = replaced[id(param)]


def build_student(cfg: StudentConfig, teacher_model: str, seed: int = 0) -> tuple[Any, Any]:
    """Return (model, tokenizer). The tokenizer is the recipe's, else the base's, else the teacher's."""
    where = f"student '{cfg.name}'"
    if cfg.lora.enabled and launcher_kind() == "fsdp":
        # measured under FSDP2 (accelerate 1.15, PEFT 0.21): accelerate's prepare cannot re-tie a PEFT-wrapped
        # embedding (AttributeError), and PEFT's trainable R1-token rows mix plain tensors into DTensor shards
        raise DistillError("LoRA under FSDP does not train: PEFT's trainable R1-token rows fail on FSDP2's DTensor "
                           "shards; launch LoRA with configs/accelerate/zero2.yaml (tested) or on one GPU",
                           where="student.lora.enabled")
    layout_warning = check_gpus(cfg.train.parallel)
    if layout_warning:
        warnings.warn(layout_warning, RuntimeWarning, stacklevel=2)
    tok_ref = cfg.tokenizer or cfg.base or teacher_model
    tokenizer = load_tokenizer(tok_ref)
    torch.manual_seed(seed)
    t = cfg.train
    attn = resolve_attn_implementation(t.attn_implementation,
                                       packed=resolve_padding_free(t.packing, t.packing_strategy, t.padding_free))
    dtype = weights_dtype(cfg)
    if cfg.base:
        ref = loadable_ref(cfg.base)
        with load_errors(ref, "the base model's config", "config"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = apply_config_overrides(AutoConfig.from_pretrained(ref), cfg)
        planned = plan_or_refuse(cfg, config, teacher_model)  # before any weights load
        with load_errors(ref, "the base model", "weights"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if receives_weights_from_main():  # (no LoRA/QLoRA here: refused under FSDP above)
                    model = empty_model(config, dtype, attn)
                else:
                    model = AutoModelForCausalLM.from_pretrained(
                        ref, config=config, dtype=dtype, attn_implementation=attn,
                        quantization_config=quantization_config(cfg.lora, where))
        info = prepare_chat_format(tokenizer, model, cfg.chat_format, where)
        allocate_unwritten(model)
    elif cfg.init_config:
        if cfg.lora.quantization != "none":
            raise DistillError("QLoRA quantises a pretrained base; a randomly initialised student needs 'base'",
                               where=where)
        if cfg.lora.enabled and cfg.lora.merge and launcher_kind() == "deepspeed":
            # refused before training, not at save: the merge there reloads the base (save_trained)
            raise DistillError("a DeepSpeed run merges its LoRA adapter into a reload of the base, and a randomly "
                               "initialised student has none: give it a 'base', or train it in full", where=where)
        info = prepare_chat_format(tokenizer, None, cfg.chat_format, where)
        config_cls, _ = ARCHITECTURES[cfg.architecture]
        vocab = cfg.init_config.get("vocab_size", len(tokenizer))  # more rows than tokens is fine (Qwen pads)
        if vocab < len(tokenizer):
            raise DistillError(f"init_config.vocab_size is {vocab} but the student's tokenizer has {len(tokenizer)} "
                               "tokens (the R1 markers included); raise it or leave it out", where=where)
        try:
            config = config_cls(**{**cfg.init_config, "vocab_size": vocab, "bos_token_id": tokenizer.bos_token_id,
                                   "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id})
        except TypeError as exc:
            raise DistillError(f"invalid init_config: {exc}", where=where) from None
        apply_config_overrides(config, cfg)
        planned = plan_or_refuse(cfg, config, teacher_model)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype)
    else:
        raise DistillError("a student needs 'base' (model id or path) or 'init_config'", where=where)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:  # the student's context, its RoPE stretch included, is what its tokenizer declares
        tokenizer.model_max_length = positions
    check_lora_targets(model, cfg)
    warn_if_positions_short(model.config, cfg)
    align_eos(model, tokenizer)
    model.distill_build_info = {"attn_implementation": attn, "weights_dtype": str(dtype).removeprefix("torch."),
                               **info, **planned}
    return model, tokenizer


def warn_if_positions_short(config: Any, cfg: StudentConfig) -> None:
    """Warn when ``train.max_length`` runs past the positions the student's config declares: a Qwen2.5-Math base
    declares 4,096, and training R1 traces at 32k on it without the recipe's ``rope_theta`` /
    ``max_position_embeddings`` stretch (students/r1-distill-qwen-1.5b.yaml) trains positions the base never saw,
    at the base's RoPE base frequency. A warning, not an error: the longest traces may be rare, and RoPE runs."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions and cfg.train.max_length > positions:
        warnings.warn(f"train.max_length {cfg.train.max_length:,} is longer than the student's "
                      f"max_position_embeddings {positions:,}: set max_position_embeddings (and rope_theta, as "
                      "students/r1-distill-qwen-1.5b.yaml does for Qwen2.5-Math's 4k) or lower train.max_length",
                      RuntimeWarning, stacklevel=3)


def check_lora_targets(model: Any, cfg: StudentConfig) -> None:
    """Refuse a ``lora.target_modules`` list naming a module the model does not have (matched as PEFT matches a
    list: the full module name, or its last dotted parts), listing the linear layers it does have.

    Why: PEFT raised NoMatchingPeftModuleError only once the trainer wrapped the model (after the student was
    built and its untrained copy written), and a list where only some names match it takes silently, so a typo
    (``q_projj``) left that projection untrained."""
    targets = cfg.lora.target_modules
    if not cfg.lora.enabled or isinstance(targets, str):
        return
    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})  # bitsandbytes' Linear4bit is one too
        shown = ", ".join(linear[:12]) + (", ..." if len(linear) > 12 else "")
        raise DistillError(f"no module named {', '.join(map(repr, missing))} in the student; its linear layers are "
                           f"{shown} (or use all-linear)", where="student.lora.target_modules")


def plan_or_refuse(cfg: StudentConfig, config: Any, teacher: str | None = None) -> dict[str, float]:
    """On a GPU, the memory plan of this launch (memory.preflight; ``teacher``: the run's, a GKD teacher unless
    train.gkd.teacher names another): refuses states that cannot fit, warns about activations that would not; the
    planned GiB per GPU go into the run's settings beside the measured peak."""
    plan, warning = preflight(cfg, config, teacher=teacher)
    if warning:
        warnings.warn(warning, RuntimeWarning, stacklevel=3)
    return {"planned_gib_per_gpu": round(plan.total / GiB, 2)} if plan else {}


def align_eos(model: Any, tokenizer: Any, sampling: SamplingConfig | None = None) -> None:
    """Make the model config and generation config stop on the tokenizer's EOS (the template's end of turn)."""
    sampling = sampling or SamplingConfig()
    eos = tokenizer.eos_token_id
    align_special_ids(model.config, tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
        do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
        max_new_tokens=min(sampling.max_new_tokens, 32768))


def publish_dtype(cfg: StudentConfig) -> torch.dtype | None:
    """The precision a student is written in: bf16 when it trains in bf16, as the published R1-Distill checkpoints
    are (float32 master weights are an optimiser detail), else as it is."""
    return torch.bfloat16 if resolve_bf16(cfg.train.bf16) else None


def cast_copy(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A model's ``state`` dict cast to ``dtype`` in host memory (no GPU memory next to the optimizer states), the
    model itself untouched (it keeps its float32 master weights; the baseline is saved before training). Tied
    weights (embeddings = LM head) stay one tensor, so save_pretrained still writes them once."""
    state_dict, cast = {}, {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.shape)
        if key not in cast:
            cast[key] = tensor.to(device="cpu", dtype=dtype)
        state_dict[name] = cast[key]
    return state_dict


def save_model(model: Any, tokenizer: Any, out: str | Path, state_dict: dict[str, Any] | None = None,
               dtype: torch.dtype | None = None) -> Path:
    """Save a plain model: a LoRA adapter is merged first (merge_and_unload), so what lands in ``out`` loads with
    AutoModelForCausalLM alone. A 4-bit (QLoRA) model cannot be merged in place: see lora.merge_adapter_folder.
    ``state_dict``: the weights to write instead of the model's own (a ZeRO-3 or FSDP model's gathered full
    weights, see distributed.consolidated_state_dict); the config and generation config still come from ``model``.
    ``dtype``: the precision to publish in (bf16 after bf16 mixed-precision training on float32 master weights)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if is_peft_model(model):
        if is_quantized(model):
            raise DistillError("a QLoRA model is 4-bit: save its adapter and merge it into a bf16 reload of the base "
                               "(distill.student.lora.merge_adapter_folder)", where=str(out))
        generation_config = model.generation_config
        model = merge_lora(model)
        model.generation_config = generation_config
    if dtype is not None and (state_dict is not None or model.dtype != dtype):
        model.save_pretrained(out, state_dict=cast_copy(model.state_dict() if state_dict is None else state_dict,
                                                        dtype))
        kept, model.config.dtype = model.config.dtype, dtype  # save_pretrained wrote the model's own dtype
        try:
            model.config.save_pretrained(out)
        finally:
            model.config.dtype = kept
    else:
        model.save_pretrained(out, state_dict=state_dict)
    tokenizer.save_pretrained(out)
    return out


def save_untrained(model: Any, tokenizer: Any, out: Path, cfg: StudentConfig | None = None,
                   is_main: bool = True) -> None:
    """Write the untrained student (the eval stage's baseline) to ``out`` from the main process. Every process must
    call it: under ZeRO-3 the weights are gathered collectively.

    Why gather, and not save before partitioning or rebuild from the config and seed on rank 0: what the baseline
    must hold is exactly the weights training starts from, and only the partitioned model holds them. Under
    ``zero3_init_flag`` no process ever has the unpartitioned model (that is the point: a 32B student does not fit
    one GPU); a random ``init_config`` student is initialised inside ``deepspeed.zero.Init``, whose random draws
    differ from a one-process build with the same seed (most tensors differ, measured with DeepSpeed 0.19); and the
    R1 rows a base gains (install_r1_format) may come from a random draw inside resize_token_embeddings. Gathering
    the built model (distributed.consolidated_state_dict) reads the real weights, module by module, the way
    DeepSpeed's own 16-bit save does, and writes them as an ordinary ``save_pretrained`` folder that loads without
    DeepSpeed.

    Without ZeRO-3 partitioning (one process, DDP, FSDP before ``prepare``) the main process already holds the
    full model and saves it directly, in the precision the student is published in (:func:`publish_dtype` of
    ``cfg``)."""
    from .distributed import consolidated_state_dict, is_zero3_partitioned

    if not is_zero3_partitioned(model):
        if is_main:
            save_model(model, tokenizer, out, dtype=publish_dtype(cfg) if cfg is not None else None)
        return
    state = consolidated_state_dict(model, is_main)
    if is_main:
        save_model(model, tokenizer, out, state_dict=state)


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
