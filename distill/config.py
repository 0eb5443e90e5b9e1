"""Typed recipe configs, loaded from YAML catalogs with dotted command-line overrides.

A run recipe (``recipes/*.yaml``) names one entry from each catalog (``data/``, ``teachers/``, ``students/``,
``eval/``) or inlines it. Every model forbids unknown keys, so a typo in a recipe is an error that names the file
and the key instead of a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .catalog import find_entry
from .config_checks import (KeyedValueError, check_choice, check_init_config, did_you_mean, optimizer_names,
                            reporting_integrations, scheduler_names, scheduler_parameters)
from .errors import DistillError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SamplingConfig(Strict):
    """R1 protocol defaults: temperature 0.6, top_p 0.95, n samples per prompt."""
    temperature: float = Field(0.6, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(32768, gt=0)
    n: int = Field(1, ge=1)
    seed: int = 0


class DataConfig(Strict):
    """Where prompts come from: the built-in synthetic task, a local JSONL/Parquet file (``path`` may hold
    ``{split}``), or a Hugging Face dataset (``hf_id``), with ``fields`` mapping our names to the source's."""
    name: str = "data"
    kind: Literal["synthetic", "jsonl", "parquet", "hf"] = "synthetic"
    generator: str = "tiny-arith"
    train_size: int = Field(256, ge=1)
    heldout_size: int = Field(64, ge=1)
    seed: int = 0
    path: str | None = None
    hf_id: str | None = None
    hf_config: str | None = None
    splits: dict[str, str] = Field(default_factory=lambda: {"train": "train", "heldout": "test"},
                                   description="our split -> the dataset's split")
    domain: str = Field("math", description="default domain when the source has none (math, code, choice)")
    fields: dict[str, str] = Field(default_factory=dict, description="our field -> source field")
    limit: int | None = Field(None, ge=1, description="read at most this many rows per split")
    on_bad_row: Literal["fail", "skip"] = Field("fail", description="a malformed line or a row missing a mapped "
                                                "field: stop with its file:line (fail) or report it and go on (skip)")
    licence: str = "apache-2.0"
    description: str = ""


class VLLMConfig(Strict):
    """Arguments for ``vllm.LLM`` (see distill/teacher/backends/vllm_backend.py for the mapping)."""
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    enable_expert_parallel: bool = False
    quantization: str | None = Field(None, description="e.g. fp8; R1's weights already ship in FP8")
    kv_cache_dtype: str | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float = Field(0.90, gt=0, le=1)
    enable_prefix_caching: bool = True
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    seed: int = 0


class PricingConfig(Strict):
    """USD per 1M tokens; defaults are DeepSeek-R1 list prices."""
    input: float = Field(0.55, ge=0)
    input_cache_hit: float = Field(0.14, ge=0)
    output: float = Field(2.19, ge=0)


class HttpConfig(Strict):
    """An OpenAI-compatible endpoint: the DeepSeek API, or a vLLM / SGLang server."""
    base_url: str
    api_key_env: str | None = Field("OPENAI_API_KEY", description="name of the env var holding the key; null: none")
    max_in_flight: int = Field(1000, ge=1)
    timeout_s: float = Field(600.0, gt=0)
    max_retries: int = Field(8, ge=0)
    rpm: float | None = None
    tpm: float | None = None
    split_n: bool = Field(False, description="one request per sample, for APIs without n (DeepSeek)")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra request fields, e.g. "
                                       "{repeat_penalty: 1.0, top_k: 0, min_p: 0.0} for llama.cpp servers, whose "
                                       "defaults (repeat penalty 1.1, top_k 40, min_p 0.05) are not R1's sampling")
    pricing: PricingConfig = PricingConfig()


class TeacherConfig(Strict):
    name: str = "teacher"
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = Field(32, ge=1)
    sampling: SamplingConfig = SamplingConfig()
    vllm: VLLMConfig = VLLMConfig()
    http: HttpConfig | None = None
    hardware: str = ""
    description: str = ""




class QualityConfig(Strict):
    """Quality filters on the reasoning (R1 paper: language mixing, long paragraphs, code blocks; the field:
    repetition loops). ``null`` turns a threshold off."""
    max_foreign_script_share: float | None = Field(0.1, ge=0, le=1, description="reasoning letters in scripts "
                                                   "other than the prompt's (Latin/CJK/Cyrillic/...)")
    min_foreign_chars: int = Field(20, ge=0, description="ignore fewer foreign letters than this (a quoted name)")
    max_paragraph_chars: int | None = Field(3000, ge=1)
    reject_code_blocks: bool = Field(True, description="``` fences in the reasoning of non-code prompts")
    repetition_ngram: int = Field(10, ge=2)
    max_repeated_ngram_share: float | None = Field(0.3, ge=0, le=1)
    max_repeated_line_share: float | None = Field(0.3, ge=0, le=1)
    min_lines: int = Field(10, ge=1, description="the line check needs at least this many lines")


class PromptDedupConfig(Strict):
    """Duplicate prompts: the first keeps its samples, later ones are rejected as near_duplicate_prompt."""
    exact: bool = True
    near: bool = True
    threshold: float = Field(0.9, gt=0, le=1, description="Jaccard similarity of word shingles (MinHash)")
    shingle: int = Field(3, ge=1, description="words per shingle")
    num_perm: int = Field(128, ge=16)
    seed: int = 0


class DecontamSource(Strict):
    """A benchmark to decontaminate against: a local JSONL/JSON/Parquet ``path``, or ``hf_id`` (+config/split)."""
    name: str
    path: str | None = None
    hf_id: str | None = None
    config: str | None = None
    split: str = "test"
    field: str = "problem"

    @model_validator(mode="after")
    def _one_source(self) -> "DecontamSource":
        if bool(self.path) == bool(self.hf_id):
            raise ValueError("give exactly one of path or hf_id")
        return self


class DecontamConfig(Strict):
    """Word n-gram overlap with benchmarks (names: aime24, aime25, math500, gpqa_diamond, livecodebench)."""
    benchmarks: list[str | DecontamSource] = Field(default_factory=list)
    ngram: int = Field(8, ge=1)


class SelectionConfig(Strict):
    """At most k correct samples per prompt: all (no cap), shortest (fewest tokens) or random (seeded)."""
    strategy: Literal["all", "shortest", "random"] = "all"
    k: int = Field(4, ge=1)
    seed: int = 0


class CodeCheckConfig(Strict):
    """Code samples run against their tests in the sandbox (distill.verify.code)."""
    threshold: float = Field(1.0, ge=0, le=1, description="pass rate a sample needs to be kept")
    workers: int = Field(0, ge=0, description="concurrent sandboxes; 0 = one per core")
    test_timeout_s: float = Field(4.0, gt=0)
    memory_mb: int = Field(512, ge=64)
    stop_on_first_failure: bool = Field(False, description="faster, but the recorded pass rate is then a lower "
                                        "bound for failing samples")


class JudgeConfig(Strict):
    """Optional LLM judge (OpenAI-compatible endpoint) for samples rejected as wrong_answer/unparsable_answer."""
    enabled: bool = False
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    workers: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_consecutive_errors: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _needs_endpoint(self) -> "JudgeConfig":
        if self.enabled and not (self.base_url and self.model):
            raise ValueError("an enabled judge needs base_url and model")
        return self


class FilterConfig(Strict):
    """Which checks run; each rejection keeps its reason."""
    reject_truncated: bool = True
    require_think: bool = True
    check_answer: bool = True
    dedup: bool = True
    max_completion_tokens: int | None = None
    workers: int = Field(0, ge=0, description="verifier processes; 0 = one per core")
    verify_timeout_s: int = Field(5, ge=1, description="math-verify's own (signal.alarm) timeout per step")
    verify_hard_timeout_s: float | None = Field(None, gt=0, description="a worker still on one sample after this "
                                                "is killed and the sample rejected as timeout; null = 3 x "
                                                "verify_timeout_s + 5")
    worker_memory_mb: int | None = Field(4096, ge=256, description="address-space cap per verifier worker")
    quality: QualityConfig = Field(default_factory=QualityConfig)
    prompt_dedup: PromptDedupConfig = Field(default_factory=PromptDedupConfig)
    decontamination: DecontamConfig = Field(default_factory=DecontamConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    code: CodeCheckConfig = Field(default_factory=CodeCheckConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    plots: bool = True


class LoraSettings(Strict):
    """PEFT LoRA / QLoRA, for users with one GPU: train low-rank adapters on a frozen base instead of all weights.

    ``quantization: nf4`` is QLoRA (the frozen base loaded in bitsandbytes NF4; on a GPU, or slowly on the CPU).
    The adapter is merged into the base when the model is saved (``merge``), so the exported folder is a plain
    model that vLLM, llama.cpp and the quantizers load without PEFT."""
    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    quantization: Literal["none", "nf4"] = Field("none", description="nf4: QLoRA (bitsandbytes; CPU too, slowly)")
    merge: bool = Field(True, description="merge_and_unload before saving, so the saved model is plain")


class GKDSettings(Strict):
    """TRL's GKD (on-policy logit distillation, generalised JSD). Teacher and student must share the tokenizer."""
    teacher: str | None = Field(None, description="teacher model path/id; null: the recipe's teacher model")
    lmbda: float = Field(0.5, ge=0, le=1, description="fraction of steps trained on the student's own samples")
    beta: float = Field(0.5, ge=0, le=1, description="JSD interpolation: 0 = forward KL, 1 = reverse KL")
    temperature: float = Field(0.9, gt=0, description="sampling temperature of on-policy generations")
    max_new_tokens: int = Field(128, ge=1, description="length of on-policy generations")
    seq_kd: bool = Field(False, description="on off-policy steps, train on teacher samples instead of the data")


class ParallelSettings(Strict):
    """How a recipe is meant to be launched and which long-context parallelism it uses (see configs/accelerate/
    and scripts/slurm_train.sbatch). ``accelerate_config``/``nodes``/``gpus_per_node`` are read by the launch
    scripts; the two *_parallel_size fields become accelerate's ParallelismConfig in the trainer."""
    accelerate_config: str | None = Field(None, description="configs/accelerate/*.yaml this recipe is tuned for")
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(1, ge=1)
    sequence_parallel_size: int = Field(1, ge=1, description="DeepSpeed Ulysses/ALST: splits each sequence over "
                                        "this many GPUs (ZeRO configs only); packing needs flash-attention or "
                                        "sdpa_varlen")
    context_parallel_size: int = Field(1, ge=1, description="FSDP2 ring attention (fsdp2 config only); "
                                       "incompatible with packing")
    gpu_memory_gib: float = Field(79, gt=0, description="memory of each GPU the recipe is laid out for, in GiB as "
                                  "torch reports it (an 80 GB H100: 79, a 141 GB H200: 139, a 24 GB card: 22); "
                                  "`distill student plan` checks the recipe against it (the launch checks the "
                                  "GPUs it finds)")

    @model_validator(mode="after")
    def _one_long_context_scheme(self) -> "ParallelSettings":
        if self.sequence_parallel_size > 1 and self.context_parallel_size > 1:
            raise ValueError("sequence_parallel_size and context_parallel_size are mutually exclusive")
        return self

    def split_unit(self) -> tuple[int, str] | None:
        """The multiple a batch's length must be for its sequences to split evenly, and what asks for it: Ulysses
        gives each of ``sequence_parallel_size`` GPUs an equal shard; torch's ring attention gives each of
        ``context_parallel_size`` GPUs a head and a tail chunk (its load balancer is skipped silently for any other
        length). None without either."""
        if self.sequence_parallel_size > 1:
            return self.sequence_parallel_size, f"parallel.sequence_parallel_size {self.sequence_parallel_size}"
        if self.context_parallel_size > 1:
            ring = 2 * self.context_parallel_size
            return ring, f"2 x parallel.context_parallel_size = {ring}"
        return None


class TrainConfig(Strict):
    """Student training. Defaults suit the CPU demo; the full-scale recipes in students/ say where theirs come from.

    ``null``/``auto`` settings are resolved on the machine that trains (distill/student/efficiency.py): bf16 and
    flash-attention on a GPU that has them, Liger kernels (as Hub kernels) when the kernels package is installed,
    TensorBoard/W&B when installed."""
    learning_rate: float = Field(1e-5, gt=0)
    lr_scheduler_type: str = Field("cosine", description="one of transformers' SchedulerType values")
    lr_scheduler_kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. {min_lr_rate: 0.1} for "
                                                "cosine_with_min_lr; checked against the schedule's parameters")
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    num_train_epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="-1: train num_train_epochs; else this many steps (>= 1)")
    per_device_train_batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    global_batch_size: int | None = Field(None, ge=1, description="if set, gradient_accumulation_steps is derived "
                                          "at launch: global / (per_device x data-parallel processes)")
    max_length: int = Field(32768, ge=16)
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm; 0: no clipping")
    weight_decay: float = Field(0.0, ge=0)
    optim: str = Field("adamw_torch", description="one of transformers' OptimizerNames values")
    adam_beta2: float = Field(0.999, gt=0, lt=1, description="0.98 steadies high learning rates on tiny models")
    packing: bool = False
    packing_strategy: Literal["bfd", "bfd_split", "wrapped"] = "bfd"
    padding_free: bool | None = Field(None, description="null: on with bfd packing (per-example position ids)")
    pad_to_multiple_of: int | None = Field(None, ge=1, description="pad each batch's length to a multiple of this; "
                                           "null: sequence_parallel_size under sequence parallelism, "
                                           "2 x context_parallel_size under ring attention, else none")
    attn_implementation: Literal["auto", "flash_attention_2", "flash_attention_3", "sdpa", "sdpa_varlen",
                                 "eager"] = Field(
        "auto", description="auto: flash_attention_2 when importable on a GPU, else sdpa (sdpa_varlen when packed)")
    use_liger_kernel: bool | None = Field(None, description="Liger's Triton kernels, from the liger-kernel package "
                                          "or else transformers' Hub kernels; null: on when either is installed "
                                          "and on a GPU")
    gradient_checkpointing: bool | None = Field(
        None, description="recompute each layer in the backward pass instead of keeping its activations; null: on "
        "for GPU training (R1-length traces run out of memory without it: REFERENCE pitfall 4), off on CPU")
    bf16: bool | None = Field(None, description="null: on when the GPU supports bf16; off on CPU")
    logging_steps: int = Field(10, ge=1)
    report_to: str | list[str] = Field(
        "auto", description="auto: tensorboard and/or wandb when installed, else none; none; or the name (or a "
        "list of names) of trackers transformers integrates (tensorboard, wandb, mlflow, ...)")
    save_steps: int = Field(200, ge=1, description="checkpoint every N steps; a rerun resumes from the last one")
    save_total_limit: int | None = Field(1, ge=1)
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null: torch's default")
    distill_method: Literal["sft", "gkd"] = Field("sft", description="gkd: logit distillation (shared tokenizer)")
    gkd: GKDSettings = Field(default_factory=GKDSettings)
    parallel: ParallelSettings = Field(default_factory=ParallelSettings)

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (train num_train_epochs) or a number of steps >= 1, not 0")
        return value

    def checkpointing(self, on_gpu: bool) -> bool:
        """``gradient_checkpointing`` resolved: the recipe's value, else on for a GPU run. Why on by default there:
        a recipe that leaves it out and trains at the 32k default plans at 3x an 80 GB GPU for a 7B (its
        activations 193 GiB), a certain out-of-memory a few steps in; every shipped GPU recipe turns it on."""
        return on_gpu if self.gradient_checkpointing is None else self.gradient_checkpointing

    @field_validator("packing_strategy")
    @classmethod
    def _packing_keeps_traces_whole(cls, value: str) -> str:
        """TRL's ``wrapped`` packing joins the traces into one stream and cuts it every max_length tokens, with no
        per-trace position ids: traces attend to each other across a bin, and a trace cut at a bin edge loses its
        answer and EOS, which teaches the student not to stop (REFERENCE pitfall 1)."""
        if value == "wrapped":
            raise ValueError("wrapped packing cuts traces at bin edges and lets packed traces attend to each other "
                             "(the student learns from traces without their answer and EOS); use bfd")
        return value

    @field_validator("optim")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        return check_choice(value, optimizer_names(), "optimizer")

    @field_validator("lr_scheduler_type")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        return check_choice(value, scheduler_names(), "scheduler")

    @model_validator(mode="after")
    def _scheduler_takes_kwargs(self) -> "TrainConfig":
        """lr_scheduler_kwargs against the parameters of the chosen schedule (a misspelt key was a TypeError when
        training began)."""
        name, kwargs = self.lr_scheduler_type, self.lr_scheduler_kwargs
        func, params = scheduler_parameters(name)
        if params is None:
            return self
        for key in kwargs:
            if key not in params:
                takes = ", ".join(params) or "no lr_scheduler_kwargs"
                raise KeyedValueError(f"lr_scheduler_kwargs.{key}", f"not a parameter of the {name} schedule "
                                      f"({func}){did_you_mean(key, params)}; it takes: {takes}", ("lr_scheduler_type",))
        for key, required in params.items():
            if required and key not in kwargs:
                raise KeyedValueError(f"lr_scheduler_kwargs.{key}", f"the {name} schedule ({func}) requires it",
                                      ("lr_scheduler_type",))
        return self

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str) and value in ("auto", "none"):
            return value
        for name in [value] if isinstance(value, str) else value:
            if name not in reporting_integrations():
                known = reporting_integrations()
                raise ValueError(f"unknown tracker {name!r}{did_you_mean(name, known)}; use auto, none or trackers "
                                 f"transformers integrates: {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _sequence_shards_evenly(self) -> "TrainConfig":
        sp = self.parallel.sequence_parallel_size
        split = self.parallel.split_unit()
        if split and self.pad_to_multiple_of is not None and self.pad_to_multiple_of % split[0]:
            raise ValueError(f"pad_to_multiple_of {self.pad_to_multiple_of} must be a multiple of {split[1]}: every "
                             "batch's length is split evenly across those GPUs")
        if self.packing and sp > 1 and self.per_device_train_batch_size != 1:
            raise ValueError(f"packing with parallel.sequence_parallel_size {sp} needs per_device_train_batch_size 1 "
                             f"(not {self.per_device_train_batch_size}): each packed bin is one micro-batch, the "
                             "shape Ulysses is set up for")
        if self.packing and self.parallel.context_parallel_size > 1:
            raise ValueError("packing with parallel.context_parallel_size > 1: ring attention keeps only the causal "
                             "mask, so packed examples would attend to each other (use sequence_parallel_size)")
        if self.distill_method == "gkd" and (sp > 1 or self.parallel.context_parallel_size > 1):
            # measured: Ulysses' loader stops on GKD's batches after the models load, with a ValueError per rank
            raise ValueError("distill_method gkd with parallel.sequence_parallel_size or context_parallel_size > 1: "
                             "TRL's GKD trainer samples from and scores whole sequences, which sequence/context "
                             "parallelism splits across GPUs; train GKD with ZeRO-3 alone (it shards the teacher "
                             "too) and a max_length one GPU holds")
        if self.distill_method == "gkd" and self.packing:
            # GKD's collator pads prompt/completion pairs; the run recorded padding-free varlen attention it never ran
            raise ValueError("packing with distill_method gkd: TRL's GKD trainer takes one prompt/completion pair a "
                             "row (it samples completions for the prompts), so it does not pack; set packing: false")
        return self


class StudentConfig(Strict):
    """A student is a base model id/path, or (for tests and the demo) an architecture config initialised randomly."""
    name: str = "student"
    base: str | None = None
    init_config: dict[str, Any] | None = None
    architecture: Literal["qwen2", "llama"] = "qwen2"
    tokenizer: str | None = Field(None, description="defaults to the base's, else the teacher's")
    chat_format: Literal["auto", "tokenizer", "r1"] = Field(
        "auto", description="r1: install distill's R1 template, adding the R1 special tokens (and embedding rows) "
        "a base lacks; tokenizer: keep the tokenizer's own template; auto: r1 unless the tokenizer already has it")
    rope_theta: float | None = Field(None, gt=0, description="override the base's RoPE base frequency (Qwen2.5-Math:"
                                     " 10k -> 300k to train at 32k)")
    max_position_embeddings: int | None = Field(None, ge=16, description="override the base's context length")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="weights dtype at load; auto: "
                                                          "float32 master weights (bf16 autocast when training in "
                                                          "bf16), bfloat16 for LoRA/QLoRA and DeepSpeed")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    licence: str = "apache-2.0"
    # a factory, not an instance: building the default here would check it against transformers at import time
    train: TrainConfig = Field(default_factory=TrainConfig)
    description: str = ""

    @model_validator(mode="after")
    def _one_way_to_build(self) -> "StudentConfig":
        if self.base and self.init_config is not None:
            raise KeyedValueError("init_config", "a student has either base (a pretrained model) or init_config (a "
                                  "random one), not both: base would load and init_config be ignored; remove one "
                                  "(or override it with null)", ("base",))
        if self.init_config:
            try:
                check_init_config(self.architecture, self.init_config)
            except KeyedValueError as exc:
                raise KeyedValueError(f"init_config.{exc.key}", str(exc), ("architecture",)) from None
            except ValueError as exc:
                raise KeyedValueError("init_config", str(exc), ("architecture",)) from None
        return self

    @model_validator(mode="after")
    def _gkd_trains_without_dropout(self) -> "StudentConfig":
        """TRL's GKD turns every dropout module off (``disable_dropout``), LoRA's included, so the student samples
        and is scored with the same weights. A LoRA dropout the recipe sets on purpose would silently not apply:
        say so (the default 0.05 is left quiet; the run records the dropout it trained with)."""
        lora = self.lora
        if self.train.distill_method == "gkd" and lora.enabled and lora.dropout and "dropout" in lora.model_fields_set:
            warnings.warn(f"student.lora.dropout {lora.dropout} does not apply with distill_method gkd: TRL's GKD "
                          "turns every dropout off, LoRA's included (the student samples and is scored with the "
                          "same weights); set lora.dropout: 0", RuntimeWarning, stacklevel=2)
        return self


class BenchmarkConfig(Strict):
    name: str
    data: str | DataConfig = "tiny-arith"
    split: Literal["train", "heldout"] = "heldout"
    limit: int | None = None
    k: int = Field(4, ge=1)
    sampling: SamplingConfig = SamplingConfig(n=4)
    batch_size: int = Field(32, ge=1)


class EvalConfig(Strict):
    name: str = "eval"
    benchmarks: list[BenchmarkConfig]
    description: str = ""


class ExportConfig(Strict):
    quantize: Literal["none", "bnb-int8", "bnb-nf4"] = "bnb-int8"
    repo_id: str | None = None
    private: bool = True
    push: bool = False


class RunRecipe(Strict):
    name: str
    seed: int = 0
    data: str | DataConfig
    teacher: str | TeacherConfig
    student: str | StudentConfig
    eval: str | EvalConfig
    filter: FilterConfig = FilterConfig()
    export: ExportConfig = ExportConfig()
    compare_unfiltered: bool = Field(False, description="also train a student on the unfiltered traces and "
                                                        "report both, to show what filtering buys")
    description: str = ""


CATALOG_KIND = {"data": ("data", DataConfig), "teacher": ("teachers", TeacherConfig),
                "student": ("students", StudentConfig), "eval": ("eval", EvalConfig)}


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DistillError("recipe file not found", where=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise DistillError(f"invalid YAML ({getattr(exc, 'problem', exc)})", where=where) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DistillError("a recipe must be a YAML mapping", where=str(path))
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``teacher.sampling.n=8`` -> (["teacher", "sampling", "n"], 8); values are parsed as YAML scalars."""
    if "=" not in text:
        raise DistillError(f"override {text!r} must look like key.path=value", where="--set")
    key, _, raw = text.partition("=")
    keys = [k.strip() for k in key.strip().split(".")]
    if not all(keys):
        problem = "no key before '='" if not key.strip() else "an empty key between dots"
        raise DistillError(f"override {text!r} is malformed ({problem}); it must look like key.path=value",
                           where="--set")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return keys, value


def set_path(data: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    """Set ``data[k1][k2]...`` creating mappings as needed; an integer key indexes into a list."""
    node: Any = data
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise DistillError(f"cannot set {text}: no item {k} in the list", where="--set")
            k = int(k)
            if last:
                node[k] = value
            else:
                node = node[k]
            continue
        if not isinstance(node, dict):
            raise DistillError(f"cannot set {text}: '{keys[i - 1]}' is not a mapping", where="--set")
        if last:
            node[k] = value
        else:
            if node.get(k) is None:
                node[k] = {}
            node = node[k]


def apply_overrides(data: dict[str, Any], overrides: list[str],
                    applied: list[tuple[list[str], str]] | None = None) -> dict[str, list[tuple[list[str], Any, str]]]:
    """Apply ``--set`` overrides in place. Overrides into a catalog reference (``teacher.sampling.n=8`` where
    ``teacher: tiny-arith``) are returned per kind, to be applied to that entry when it is loaded; the others'
    (keys, text) are appended to ``applied``, so that an error at their keys can name them."""
    per_entry: dict[str, list[tuple[list[str], Any, str]]] = {}
    for text in overrides or []:
        keys, value = parse_override(text)
        if len(keys) > 1 and keys[0] in CATALOG_KIND and isinstance(data.get(keys[0]), str):
            per_entry.setdefault(keys[0], []).append((keys[1:], value, text))
        else:
            set_path(data, keys, value, text)
            if applied is not None:
                applied.append((keys, text))
    return per_entry


# the branches of a catalog field (``student: str | StudentConfig``) as pydantic names them in an error's location
_CATALOG_BRANCHES = {"str"} | {model.__name__ for _, model in CATALOG_KIND.values()}


def _branch(part: Any) -> str | None:
    """The branch a union error's location part names: ``StudentConfig``, or the same written as
    ``function-after[_one_way_to_build(), StudentConfig]`` for a model with an after-validator (nested once per
    validator: ``function-after[_b(), function-after[_a(), StudentConfig]]``); else None."""
    while isinstance(part, str) and part.startswith("function-") and part.endswith("]"):
        part = part[part.index("[") + 1:-1].split(", ", 1)[-1]
    return part if part in _CATALOG_BRANCHES else None


def _taken_branch_errors(errors: list[Any], data: dict[str, Any]) -> list[Any]:
    """The errors of the branch each catalog field's value took, their locations without the branch's name.

    Why: pydantic reports a union field once per branch, the string branch first. An inline ``student:`` mapping
    with one bad key read "key 'student.str': Input should be a valid string (and 1 more)", hiding the key."""
    kept = []
    for err in errors:
        loc = err["loc"]
        if len(loc) > 1 and loc[0] in CATALOG_KIND and _branch(loc[1]):
            if (_branch(loc[1]) == "str") != isinstance(data.get(loc[0]), str):
                continue
            err = {**err, "loc": (loc[0], *loc[2:])}
        kept.append(err)
    return kept or errors


def _blame(locs: list[tuple[str, ...]], where: str, overrides: list[tuple[list[str], str]]) -> str:
    """Who to name for an error at ``locs[0]`` (``locs[1:]``: keys that take part): the ``--set`` overrides of those
    keys or of one above them (the typo is in the override, not the file); for an error about a section that
    overrides changed inside, the file with them."""
    at = [text for keys, text in overrides if any(loc[:len(keys)] == tuple(keys) for loc in locs)]
    if at:  # the file too: the key in the message is relative to it
        return ", ".join(f"--set {t}" for t in dict.fromkeys(at)) + f", applied to {where}"
    inside = [text for keys, text in overrides if tuple(keys[:len(locs[0])]) == locs[0]]
    return f"{where} with " + ", ".join(f"--set {t}" for t in inside) if inside else where


def _validate(model: type[Strict], data: dict[str, Any], where: str,
              overrides: list[tuple[list[str], str]] | None = None) -> Any:
    """``overrides``: the (keys, text) of the ``--set`` overrides applied to ``data``, to name in errors they cause."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = _taken_branch_errors(exc.errors(), data)
        err = errors[0]
        loc, msg = tuple(str(p) for p in err["loc"]), err["msg"]
        locs = [loc]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, KeyedValueError):
            locs = [(*loc, *k.split(".")) for k in (cause.key, *cause.related)]
            msg = str(cause)
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        key = ".".join(locs[0]) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DistillError(f"key '{key}': {msg}{more}", where=_blame(locs, where, overrides or [])) from None


def load_entry(kind: str, ref: str | dict[str, Any], overrides: list[tuple[list[str], Any, str]] | None = None) -> Any:
    """Load one catalog entry (``kind`` in data/teacher/student/eval) by name, path or inline mapping."""
    folder, model = CATALOG_KIND[kind]
    if isinstance(ref, str):
        path = find_entry(folder, ref)
        data, where = read_yaml(path), str(path)
        data.setdefault("name", path.stem)
    else:
        data, where = dict(ref), f"<inline {kind}>"
    for keys, value, text in overrides or []:
        set_path(data, keys, value, text)
    return _validate(model, data, where, [(keys, text) for keys, _, text in overrides or []])


class ResolvedRecipe(BaseModel):
    """A run recipe with every catalog reference loaded and validated."""
    model_config = ConfigDict(protected_namespaces=())
    name: str
    seed: int
    source: str
    data: DataConfig
    teacher: TeacherConfig
    student: StudentConfig
    eval: EvalConfig
    filter: FilterConfig
    export: ExportConfig
    compare_unfiltered: bool = False

    def fingerprint(self, *parts: str) -> str:
        """A hash of the named sections, so a stage can tell whether its finished output matches this recipe."""
        dump = self.model_dump(mode="json")
        chosen = {p: dump[p] for p in parts} if parts else dump
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def load_recipe(ref: str, overrides: list[str] | None = None) -> ResolvedRecipe:
    """Load a run recipe by catalog name (``recipes/NAME.yaml``) or path, apply ``--set`` overrides, resolve refs."""
    path = find_entry("recipes", ref)
    data = read_yaml(path)
    applied: list[tuple[list[str], str]] = []
    per_entry = apply_overrides(data, overrides or [], applied)
    data.setdefault("name", path.stem)
    recipe = _validate(RunRecipe, data, str(path), applied)
    resolved = {}
    for kind in ("data", "teacher", "student", "eval"):
        ref_value = getattr(recipe, kind)
        resolved[kind] = (ref_value if isinstance(ref_value, BaseModel)
                          else load_entry(kind, ref_value, per_entry.get(kind)))
    return ResolvedRecipe(name=recipe.name, seed=recipe.seed, source=str(path), filter=recipe.filter,
                          export=recipe.export, compare_unfiltered=recipe.compare_unfiltered, **resolved)
