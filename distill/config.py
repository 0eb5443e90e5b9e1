"""Typed recipe configs, loaded from YAML catalogs with dotted command-line overrides.

A run recipe (``recipes/*.yaml``) names one entry from each catalog (``data/``, ``teachers/``, ``students/``,
``eval/``) or inlines it. Every model forbids unknown keys, so a typo in a recipe is an error that names the file
and the key instead of a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .catalog import find_entry
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
    """Where prompts come from: the built-in synthetic task or a local JSONL file."""
    name: str = "data"
    kind: Literal["synthetic", "jsonl"] = "synthetic"
    generator: str = "tiny-arith"
    train_size: int = Field(256, ge=1)
    heldout_size: int = Field(64, ge=1)
    seed: int = 0
    path: str | None = None
    fields: dict[str, str] = Field(default_factory=dict, description="our field -> source field")
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


class FilterConfig(Strict):
    """Which checks run; each rejection keeps its reason."""
    reject_truncated: bool = True
    require_think: bool = True
    check_answer: bool = True
    dedup: bool = True
    max_completion_tokens: int | None = None
    workers: int = Field(0, ge=0, description="math-verify processes; 0 = one per core")
    verify_timeout_s: int = Field(5, ge=1)


class TrainConfig(Strict):
    learning_rate: float = Field(1e-5, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    num_train_epochs: float = Field(3.0, gt=0)
    max_steps: int = -1
    per_device_train_batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(32768, ge=16)
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    packing: bool = False
    gradient_checkpointing: bool = False
    bf16: bool = False
    logging_steps: int = 10
    seed: int = 0
    threads: int | None = None


class StudentConfig(Strict):
    """A student is a base model id/path, or (for tests and the demo) an architecture config initialised randomly."""
    name: str = "student"
    base: str | None = None
    init_config: dict[str, Any] | None = None
    architecture: Literal["qwen2", "llama"] = "qwen2"
    tokenizer: str | None = Field(None, description="defaults to the base's, else the teacher's")
    licence: str = "apache-2.0"
    train: TrainConfig = TrainConfig()
    description: str = ""


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
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


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


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, list[tuple[list[str], Any, str]]]:
    """Apply ``--set`` overrides in place. Overrides into a catalog reference (``teacher.sampling.n=8`` where
    ``teacher: tiny-arith``) are returned per kind, to be applied to that entry when it is loaded."""
    per_entry: dict[str, list[tuple[list[str], Any, str]]] = {}
    for text in overrides or []:
        keys, value = parse_override(text)
        if len(keys) > 1 and keys[0] in CATALOG_KIND and isinstance(data.get(keys[0]), str):
            per_entry.setdefault(keys[0], []).append((keys[1:], value, text))
        else:
            set_path(data, keys, value, text)
    return per_entry


def _validate(model: type[Strict], data: dict[str, Any], where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise DistillError(f"key '{key}': {err['msg']}{more}", where=where) from None


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
    return _validate(model, data, where)


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

    def fingerprint(self, *parts: str) -> str:
        """A hash of the named sections, so a stage can tell whether its finished output matches this recipe."""
        dump = self.model_dump(mode="json")
        chosen = {p: dump[p] for p in parts} if parts else dump
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def load_recipe(ref: str, overrides: list[str] | None = None) -> ResolvedRecipe:
    """Load a run recipe by catalog name (``recipes/NAME.yaml``) or path, apply ``--set`` overrides, resolve refs."""
    path = find_entry("recipes", ref)
    data = read_yaml(path)
    per_entry = apply_overrides(data, overrides or [])
    data.setdefault("name", path.stem)
    recipe = _validate(RunRecipe, data, str(path))
    resolved = {}
    for kind in ("data", "teacher", "student", "eval"):
        ref_value = getattr(recipe, kind)
        resolved[kind] = (ref_value if isinstance(ref_value, BaseModel)
                          else load_entry(kind, ref_value, per_entry.get(kind)))
    return ResolvedRecipe(name=recipe.name, seed=recipe.seed, source=str(path), filter=recipe.filter,
                          export=recipe.export, **resolved)
