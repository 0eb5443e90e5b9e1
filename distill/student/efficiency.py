"""Resolves the ``auto`` efficiency settings of a recipe on the machine that actually trains.

Why: one recipe must run on an 8xH100 node (flash-attention 2, Liger kernels, bf16), on a one-GPU workstation that
lacks flash-attn, and in CI on a CPU. Each choice is a pure function of what is requested and what the machine
has, so the rules are testable here; a recipe that *asks* for something missing gets a warning and the nearest
working setting instead of a crash three hours into a queue.

Padding-free packing needs no flash-attention: transformers derives a block-diagonal mask from the restarting
``position_ids`` for ``sdpa`` and ``eager`` (masking_utils.find_packed_sequence_indices), so packed examples never
attend to each other on any backend (tests/test_student_packing.py). Flash-attention's varlen kernel only makes it
cheaper (no N x N mask).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def installed(module: str) -> bool:
    """True when ``module`` can be imported (without importing it: flash_attn pulls CUDA on import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_attn_implementation(requested: str = "auto", *, cuda: bool | None = None,
                                have: Sequence[str] | None = None, packed: bool = False) -> str:
    """``auto`` -> flash_attention_2 when flash_attn is importable and a GPU is present, else sdpa; for padding-free
    packed training the SDPA fallback is ``sdpa_varlen`` (attention.py: per-document SDPA, no N x N waste).

    An explicit flash-attention request that cannot be met (package missing, or no GPU) warns and falls back the
    same way: plain sdpa honours packed position ids too, only slower."""
    cuda = cuda_available() if cuda is None else cuda
    have = [k for k, mod in FLASH_PACKAGES.items() if installed(mod)] if have is None else list(have)
    fallback = _varlen() if packed else "sdpa"
    if requested == "auto":
        return "flash_attention_2" if cuda and "flash_attention_2" in have else fallback
    if requested in FLASH_PACKAGES:
        if requested not in have:
            warnings.warn(f"the recipe asks for {requested} but {FLASH_PACKAGES[requested]} is not installed; "
                          f"using {fallback} (pip install the 'gpu' extra for flash-attention)", RuntimeWarning,
                          stacklevel=2)
            return fallback
        if not cuda:
            warnings.warn(f"the recipe asks for {requested} but no GPU is present; using {fallback}",
                          RuntimeWarning, stacklevel=2)
            return fallback
    if requested == "sdpa_varlen":
        return _varlen()
    return requested


def _varlen() -> str:
    from .attention import register

    return register()


def hub_kernels_installed() -> bool:
    """True when transformers can kernelize with the Hub ``kernels`` package (a version it supports)."""
    from transformers.utils import is_kernels_available

    return bool(is_kernels_available())


def liger_provider(*, package: bool | None = None, hub: bool | None = None) -> str | None:
    """Where Liger's kernels come from on this machine: ``"liger_kernel"`` (the pip package: local Triton code, so
    it works on an offline cluster), else ``"hub"`` (transformers' Hub kernels, fetched from the Hub or its cache at
    first use), else None.

    Why the package first: TRL 1.16 deprecates its ``use_liger_kernel`` argument in favour of Hub kernels, but GPU
    nodes are often cut off from the Hub, and a user who pip-installed liger-kernel asked for exactly that."""
    package = installed("liger_kernel") if package is None else package
    if package:
        return "liger_kernel"
    hub = hub_kernels_installed() if hub is None else hub
    return "hub" if hub else None


def resolve_liger(requested: bool | None, *, cuda: bool | None = None, have: bool | None = None) -> bool:
    """Liger's Triton kernels (fused RMSNorm, SwiGLU, RoPE) need a GPU and a provider (:func:`liger_provider`:
    the liger-kernel package or transformers' Hub kernels; train.liger_callbacks applies them). ``None`` (auto):
    on when both are here. An explicit request that cannot be met warns and trains without them."""
    cuda = cuda_available() if cuda is None else cuda
    have = liger_provider() is not None if have is None else have
    if requested is None:
        return bool(cuda and have)
    if requested and not (cuda and have):
        why = "neither liger-kernel nor the kernels package (Hub kernels) is installed" if not have \
            else "no GPU is present"
        warnings.warn(f"the recipe asks for use_liger_kernel but {why}; training without it", RuntimeWarning,
                      stacklevel=2)
        return False
    return bool(requested)


def resolve_bf16(requested: bool | None, *, cuda: bool | None = None, supported: bool | None = None) -> bool:
    """bf16 mixed precision on a GPU that supports it (Ampere and later); CPU training stays float32."""
    cuda = cuda_available() if cuda is None else cuda
    if supported is None:
        import torch

        supported = bool(cuda and torch.cuda.is_bf16_supported())
    if requested is None:
        return bool(cuda and supported)
    if requested and not (cuda and supported):
        warnings.warn("the recipe asks for bf16 but this machine has no bf16 GPU; training in float32",
                      RuntimeWarning, stacklevel=2)
        return False
    return bool(requested)


def resolve_report_to(requested: str | Sequence[str] = "auto", *, have_tensorboard: bool | None = None,
                      have_wandb: bool | None = None) -> list[str]:
    """``auto`` -> every installed tracker among tensorboard and wandb (wandb only when it can start: logged in, an
    API key, or an offline/disabled WANDB_MODE, :func:`wandb_login_problem`; so an unconfigured install never
    fails on a missing key, and a ``wandb login`` is honoured). Explicit names
    are returned as they are: :func:`check_report_to` refuses the ones that cannot log here."""
    if requested == "none":
        return []
    if isinstance(requested, str) and requested != "auto":
        return [requested]
    if not isinstance(requested, str):
        return list(requested)
    have_tensorboard = (installed("tensorboard") or installed("tensorboardX")) if have_tensorboard is None \
        else have_tensorboard
    if have_wandb is None:
        have_wandb = installed("wandb") and wandb_login_problem() is None
    return [name for name, ok in (("tensorboard", have_tensorboard), ("wandb", have_wandb)) if ok]


def check_report_to(requested: str | Sequence[str]) -> None:
    """Refuse a tracker that ``train.report_to`` names explicitly but that cannot log on this machine, as one
    DistillError naming the key and the fix; ``auto`` and ``none`` pass (auto picks only what works).

    Why: transformers finds out only once the trainer starts, after the student is built (minutes to load a 70B):
    a missing tensorboard was ``ModuleNotFoundError: No module named 'tensorboardX'``, wandb without an API key
    ``UsageError: No API key configured`` from deep in the trainer, both reported as internal errors. The train
    stage, the multi-process launch and the pipeline (before the teacher generates) call this first. Only the main
    process logs to trackers (transformers' callbacks and ours), so only its environment is checked; when it
    refuses, the launcher ends the other processes."""
    if isinstance(requested, str) and requested in ("auto", "none"):
        return
    from .distributed import is_main_process

    if not is_main_process():
        return
    names = [requested] if isinstance(requested, str) else list(requested)
    problems = [p for p in (tracker_problem(name) for name in dict.fromkeys(names)) if p]
    if problems:
        from ..errors import DistillError

        raise DistillError("; ".join(problems), where="student.train.report_to")


def tracker_problem(name: str) -> str | None:
    """Why tracker ``name`` cannot log here, with the fix, or None when it can (trackers other than tensorboard and
    wandb are left to transformers)."""
    if name == "tensorboard" and not (installed("tensorboard") or installed("tensorboardX")):
        return ("asks for tensorboard, which is not installed (nor tensorboardX): pip install tensorboard, or leave "
                "tensorboard out of report_to")
    if name == "wandb":
        if not installed("wandb"):
            return "asks for wandb, which is not installed: pip install wandb, or leave wandb out of report_to"
        return wandb_login_problem()
    return None


WANDB_OFFLINE_MODES = ("offline", "dryrun", "disabled")  # no server, so no API key needed
WANDB_API_HOST = "api.wandb.ai"  # W&B's cloud, where ``wandb login`` stores the key
WANDB_FORGE_HOSTS = ("forge.coreweave.com", "api.forge.coreweave.com")  # wandb 0.31's default, in front of it


def wandb_login_problem(environ: dict[str, str] | None = None) -> str | None:
    """Why W&B would not start here for want of credentials, or None when it would: what wandb itself consults
    (checked against wandb 0.31's wbauth), read without contacting the server and without starting wandb's session
    (wandb reads WANDB_* once per process, and :func:`distill.student.train.wandb_defaults` sets some later):

    - ``WANDB_MODE``, else ``mode`` in wandb's global settings file: offline, dryrun and disabled need no key;
    - ``WANDB_API_KEY`` or ``WANDB_IDENTITY_TOKEN_FILE`` in the environment, or ``api_key`` in that settings file;
    - the netrc file (``NETRC``, else ``~/.netrc`` or ``~/_netrc``) holding a password for the server's host:
      ``WANDB_BASE_URL`` or the settings file's ``base_url``, by default W&B's cloud (api.wandb.ai, which
      ``wandb login`` writes; wandb 0.31 addresses it through CoreWeave Forge and looks up either).

    Without any of them wandb.init stops with ``UsageError: No API key configured`` (a process without a
    terminal cannot be prompted)."""
    env = os.environ if environ is None else environ
    settings = _wandb_global_settings(env)
    mode = (env.get("WANDB_MODE") or settings.get("mode") or "online").strip()
    if mode in WANDB_OFFLINE_MODES:
        return None
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE") or settings.get("api_key"):
        return None
    from urllib.parse import urlsplit

    host = urlsplit(env.get("WANDB_BASE_URL") or settings.get("base_url") or "").hostname
    hosts = {host} if host else {WANDB_API_HOST, *WANDB_FORGE_HOSTS}
    if host in WANDB_FORGE_HOSTS:
        hosts.add(WANDB_API_HOST)
    netrc_path = _netrc_path(env)
    if _netrc_has_password(netrc_path, hosts):
        return None
    return (f"asks for wandb, which has no API key here (no WANDB_API_KEY, no entry for {host or WANDB_API_HOST} in "
            f"{netrc_path}): run `wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline to log to the run "
            "folder only (upload later with `wandb sync`)")


def _wandb_global_settings(env: Any) -> dict[str, str]:
    """The ``[default]`` section of wandb's global settings file (``WANDB_CONFIG_DIR/settings``, else
    ``~/.config/wandb/settings``); empty when missing or unreadable. The workspace file (``./wandb/settings``,
    which a plain ``wandb offline`` writes) is not read: training points WANDB_DIR into the run folder, so wandb
    does not read it there either."""
    import configparser

    config_dir = env.get("WANDB_CONFIG_DIR")
    path = Path(config_dir).expanduser() / "settings" if config_dir else Path("~/.config/wandb/settings").expanduser()
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (OSError, configparser.Error, UnicodeDecodeError):
        return {}
    return dict(parser["default"]) if parser.has_section("default") else {}


def _netrc_path(env: Any) -> Path:
    """The netrc file wandb reads (wbauth.wbnetrc): ``NETRC``, else ``~/.netrc``, else ``~/_netrc``."""
    if env.get("NETRC"):
        return Path(env["NETRC"]).expanduser()
    unix = Path("~/.netrc").expanduser()
    windows = Path("~/_netrc").expanduser()
    return windows if not unix.exists() and windows.exists() else unix


def _netrc_has_password(path: Path, hosts: set[str]) -> bool:
    import netrc

    try:
        parsed = netrc.netrc(str(path))  # an explicit file: no ownership check, as wandb reads it
    except (OSError, netrc.NetrcParseError):
        return False  # wandb warns and goes on without it
    return any((creds := parsed.authenticators(host)) and creds[2] for host in hosts)


def resolve_padding_free(packing: bool, strategy: str, requested: bool | None) -> bool:
    """TRL turns padding-free on for bfd packing regardless; we say so in the config instead of hiding it."""
    if packing and strategy in ("bfd", "bfd_split"):
        return True
    return bool(requested)
