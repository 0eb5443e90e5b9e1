"""Recipe values checked against the libraries that will use them (transformers' optimizer and scheduler names,
each schedule's own parameters, the trackers it integrates, a random student's config class), so that a typo is one
error at recipe load naming the key, not a library traceback when training starts.

Why a module of its own: the typed recipe models (distill/config.py) say what a recipe holds; this asks transformers
what it accepts (imported on first use: it pulls in torch), and words the answer for the user.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import warnings
from typing import Any


class KeyedValueError(ValueError):
    """A validator's complaint about one key below the field or model that raised it (``key``, dotted): the error
    names ``train.lr_scheduler_kwargs.min_lr_ratee`` rather than just ``train``. ``related``: other keys (relative
    to the same place) that take part, so that a ``--set`` of one of them is named as the cause."""

    def __init__(self, key: str, message: str, related: tuple[str, ...] = ()):
        super().__init__(message)
        self.key = key
        self.related = related


def did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean X?)`` for the choice closest to a misspelt ``word``, or "" when none is close."""
    near = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {near[0]}?)" if near else ""


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}{did_you_mean(value, choices)}; transformers knows: "
                         f"{', '.join(choices)}")
    return value


# What transformers accepts is asked of transformers itself (imported on first use: it pulls in torch).
@functools.lru_cache(maxsize=None)
def optimizer_names() -> tuple[str, ...]:
    from transformers.training_args import OptimizerNames

    return tuple(o.value for o in OptimizerNames)


@functools.lru_cache(maxsize=None)
def scheduler_names() -> tuple[str, ...]:
    from transformers.trainer_utils import SchedulerType

    return tuple(s.value for s in SchedulerType)


@functools.lru_cache(maxsize=None)
def reporting_integrations() -> tuple[str, ...]:
    from transformers.integrations import INTEGRATION_TO_CALLBACK

    return tuple(INTEGRATION_TO_CALLBACK)


@functools.lru_cache(maxsize=None)
def scheduler_parameters(name: str) -> tuple[str, dict[str, bool] | None]:
    """(the schedule function's name, {keyword it takes from lr_scheduler_kwargs: whether it is required}) for the
    scheduler ``name``, read from the function transformers' get_scheduler calls; None when it takes ``**kwargs``
    that cannot be traced to one class. get_scheduler passes the optimizer and the warmup/training step counts
    itself, and gives the constant schedules no kwargs at all."""
    import transformers.optimization as opt
    from transformers.trainer_utils import SchedulerType

    kind = SchedulerType(name)
    func = opt.TYPE_TO_SCHEDULER_FUNCTION[kind]
    if kind in (SchedulerType.CONSTANT, SchedulerType.CONSTANT_WITH_WARMUP):
        return func.__name__, {}
    params = list(inspect.signature(func).parameters.values())[1:]  # the optimizer
    if any(p.kind is p.VAR_KEYWORD for p in params):
        # get_reduce_on_plateau_schedule / get_greedy_schedule hand **kwargs to one class (ReduceLROnPlateau, GreedyLR)
        classes = [obj for n in func.__code__.co_names if inspect.isclass(obj := func.__globals__.get(n))]
        if len(classes) != 1:
            return func.__name__, None
        params = list(inspect.signature(classes[0].__init__).parameters.values())[2:]  # self, optimizer
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return func.__name__, None
    return func.__name__, {p.name: p.default is p.empty for p in params
                           if p.name not in ("num_warmup_steps", "num_training_steps")
                           and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


# init_config keys the builder sets from the tokenizer (distill/student/model.py build_student); vocab_size is allowed
# (`distill student plan` needs it for a student whose vocabulary comes from the run's teacher)
_FROM_TOKENIZER = ("bos_token_id", "eos_token_id", "pad_token_id")
# read by the modeling code (getattr) though the config classes do not declare it (Qwen2)
_READ_BY_MODELS = ("head_dim",)


@functools.lru_cache(maxsize=None)
def _config_keys(architecture: str) -> frozenset[str]:
    """The keys an architecture's config class declares (its __init__ parameters and what a default one holds)."""
    from transformers import CONFIG_MAPPING

    config_cls = CONFIG_MAPPING[architecture]
    declared = set(inspect.signature(config_cls.__init__).parameters) - {"self"}
    return frozenset(declared | set(config_cls().to_dict()) | set(_READ_BY_MODELS))


def check_init_config(architecture: str, init_config: dict[str, Any]) -> None:
    """Check a random student's ``init_config`` against its architecture's transformers config class: keys it
    knows, their types (the class's own strict checks), positive sizes, and head counts that divide (what
    otherwise stops at the first forward pass with a tensor-size error). Raises KeyedValueError naming the key."""
    from huggingface_hub.errors import StrictDataclassFieldValidationError
    from transformers import CONFIG_MAPPING

    config_cls = CONFIG_MAPPING[architecture]
    name = config_cls.__name__
    for key in init_config:
        if key in _FROM_TOKENIZER:
            raise KeyedValueError(key, "is set from the student's tokenizer; remove it from init_config")
    for key, value in init_config.items():
        sized = key.endswith("_size") or key.startswith("num_") or key in ("head_dim", "max_position_embeddings")
        if sized and isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise KeyedValueError(key, f"must be a positive integer, not {value}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = config_cls(**init_config)
    except StrictDataclassFieldValidationError as exc:
        lines = str(exc).strip().splitlines()
        field = lines[0].split("'")[1] if lines[0].count("'") >= 2 else ""
        detail = lines[-1].strip().split(": ", 1)[-1]
        raise KeyedValueError(field, f"{detail} ({name})") if field in init_config else \
            ValueError(f"init_config: {detail} ({name})") from None
    except Exception as exc:  # noqa: BLE001 - the config class's own checks (layer types, rope parameters, ...)
        detail = " ".join(str(exc).split()) or exc.__class__.__name__
        raise ValueError(f"init_config is not a valid {name}: {detail[:300]}") from None
    known = _config_keys(architecture)
    kept = config.to_dict()
    for key in init_config:
        if key not in known and key in kept:  # not declared, not consumed (rope_theta is: it becomes rope_parameters)
            raise KeyedValueError(key, f"not a setting of {name}{did_you_mean(key, sorted(known))}")
    heads, hidden = config.num_attention_heads, config.hidden_size
    if not init_config.get("head_dim") and hidden % heads:
        key = "num_attention_heads" if "num_attention_heads" in init_config else "hidden_size"
        raise KeyedValueError(key, f"hidden_size {hidden} is not divisible by num_attention_heads {heads} (each "
                                   "head gets hidden_size / num_attention_heads dimensions)")
    kv = getattr(config, "num_key_value_heads", None) or heads
    if heads % kv:
        key = "num_key_value_heads" if "num_key_value_heads" in init_config else "num_attention_heads"
        raise KeyedValueError(key, f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    act = getattr(config, "hidden_act", None)
    if "hidden_act" in init_config and isinstance(act, str):
        from transformers.activations import ACT2FN

        if act not in ACT2FN:
            raise KeyedValueError("hidden_act", f"unknown activation {act!r}{did_you_mean(act, ACT2FN)}; transformers "
                                                f"knows: {', '.join(sorted(ACT2FN))}")
