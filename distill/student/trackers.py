"""Training trackers: which of TensorBoard and W&B a run logs to (``train.report_to``), the check that a tracker
the recipe names can log on this machine, and where their logs go (the run folder).

Why a module of its own: a tracker named but unusable was found only once the trainer started, after the student
was built, and W&B's defaults (the current directory, a project called "huggingface", a new run on every resume)
scattered one training's curves; the rules for both live here, apart from the training loop.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

from ..config import StudentConfig
from ..errors import DistillError, first_line
from . import distributed
from .efficiency import installed


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
    if not distributed.is_main_process():
        return
    names = [requested] if isinstance(requested, str) else list(requested)
    problems = [p for p in (tracker_problem(name) for name in dict.fromkeys(names)) if p]
    if problems:
        raise DistillError("; ".join(problems), where="student.train.report_to")


# transformers' own availability checks (transformers.integrations.integration_utils) of the other trackers it
# logs to; flyte needs two packages
TRACKER_AVAILABLE = {"azure_ml": ("is_azureml_available",), "comet_ml": ("is_comet_available",),
                     "mlflow": ("is_mlflow_available",), "neptune": ("is_neptune_available",),
                     "trackio": ("is_trackio_available",), "codecarbon": ("is_codecarbon_available",),
                     "clearml": ("is_clearml_available",), "dagshub": ("is_dagshub_available",),
                     "flyte": ("is_flytekit_available", "is_flyte_deck_standard_available"),
                     "dvclive": ("is_dvclive_available",), "swanlab": ("is_swanlab_available",),
                     "kubeflow": ("is_kubeflow_available",)}


def tracker_problem(name: str) -> str | None:
    """Why tracker ``name`` cannot log here, with the fix, or None when it can.

    Trackers other than tensorboard and wandb are checked with transformers' own availability test: left to
    transformers, a missing mlflow stopped the run only when the trainer was built (after the student, its
    untrained copy written), as a RuntimeError."""
    if name == "tensorboard" and not (installed("tensorboard") or installed("tensorboardX")):
        return ("asks for tensorboard, which is not installed (nor tensorboardX): pip install tensorboard, or leave "
                "tensorboard out of report_to")
    if name == "wandb":
        if not installed("wandb"):
            return "asks for wandb, which is not installed: pip install wandb, or leave wandb out of report_to"
        return wandb_login_problem()
    if name in TRACKER_AVAILABLE:
        from transformers.integrations import integration_utils

        if not all(getattr(integration_utils, check)() for check in TRACKER_AVAILABLE[name]):
            return (f"asks for {name}, whose package is not installed here: pip install it, or leave {name} out of "
                    "report_to")
    return None


WANDB_OFFLINE_MODES = ("offline", "dryrun", "disabled")  # no server, so no API key needed
WANDB_API_HOST = "api.wandb.ai"  # W&B's cloud, where ``wandb login`` stores the key
WANDB_FORGE_HOSTS = ("forge.coreweave.com", "api.forge.coreweave.com")  # wandb 0.31's default, in front of it


def wandb_login_problem(environ: dict[str, str] | None = None) -> str | None:
    """Why W&B would not start here for want of credentials, or None when it would: what wandb itself consults
    (checked against wandb 0.31's wbauth), read without contacting the server and without starting wandb's session
    (wandb reads WANDB_* once per process, and :func:`wandb_defaults` sets some later):

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


def tensorboard_callbacks(cfg: StudentConfig, out_dir: Path, resume_step: int = 0) -> list[Any]:
    """TensorBoard logs (loss, learning rate, tokens/s) in ``RUN/student/tensorboard`` when tensorboard is here.

    ``resume_step``: the step training resumes from (its checkpoint's; 0 when it starts over). Whatever an earlier
    attempt logged after it is purged (SummaryWriter's ``purge_step``): a run killed at step 5 after checkpoint-3
    and resumed logs steps 4 and 5 again, and TensorBoard drew both attempts' points in one curve (a rerun with no
    checkpoint yet, the whole curve twice).

    First, before the trainer is built, a tracker the recipe names that cannot log here (not installed, W&B without
    an API key) is one error naming ``student.train.report_to`` (:func:`check_report_to`; the train stage and
    the launcher check before the student is built, this covers other callers of train_student). A tensorboard
    that is installed but does not import is one error too, not tensorboardX's ModuleNotFoundError."""
    check_report_to(cfg.train.report_to)
    if "tensorboard" not in resolve_report_to(cfg.train.report_to) or not distributed.is_main_process():
        return []
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise DistillError(f"tensorboard does not import ({first_line(exc)}), nor does tensorboardX: pip install "
                               "tensorboard, or leave tensorboard out of report_to",
                               where="student.train.report_to") from exc
    from transformers.integrations import TensorBoardCallback

    writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=resume_step + 1)
    return [TensorBoardCallback(tb_writer=writer)]


USER_WANDB_DIR = os.environ.get("WANDB_DIR")


def wandb_defaults(out_dir: Path, resumes: bool = True) -> None:
    """W&B runs land in the run folder (``RUN/student/wandb``, next to the TensorBoard logs) under the project
    ``r1-distill``, unless WANDB_DIR / WANDB_PROJECT say otherwise. Why: wandb's own defaults are the current
    directory and a project called "huggingface", which scatters runs of different students.

    A training run folder keeps one W&B run id (``wandb/run_id``, written once by the main process, atomically)
    and W&B is told to resume it (WANDB_RUN_ID, WANDB_RESUME=allow), unless WANDB_RUN_ID or WANDB_RESUME are the
    user's own (DISTILL_WANDB_RUN_ID records the id set here). Why: a rerun after a crash resumes training from its
    checkpoint, but W&B started a new run, so one training's curves were split into two runs. ``--force`` wipes
    the folder, and with it the id: a new training, a new W&B run. So does a rerun with no checkpoint to resume
    (``resumes`` False: the crash came before the first save): training starts again at step 0, and resuming the
    old W&B run drew its first steps twice, the crashed attempt's and the new one's, in one curve.

    The student and the unfiltered ablation each get their own folder, so their own id. When both train in one
    process, the previous training's W&B run is finished and wandb's session reset here: transformers leaves its
    run open (the ablation logged into the student's run) and wandb reads WANDB_* once per session."""
    import re
    import secrets
    import string

    os.environ.setdefault("WANDB_PROJECT", "r1-distill")
    folder = out_dir / "wandb"
    folder.mkdir(parents=True, exist_ok=True)
    if USER_WANDB_DIR is None:  # per training run: the student and the unfiltered ablation each get their own
        os.environ["WANDB_DIR"] = str(folder)
    ours = os.environ.get("DISTILL_WANDB_RUN_ID")  # set here before, in this process or the one that started it
    set_here = {"WANDB_RUN_ID": ours, "WANDB_RESUME": "allow" if ours else None}
    users_own = any(os.environ.get(key, value) != value for key, value in set_here.items())
    if users_own or not distributed.is_main_process():  # only the main process logs to W&B
        return
    path = folder / "run_id"
    if not path.exists() or not resumes:
        tmp = folder / f".run_id.{os.getpid()}.tmp"
        tmp.write_text("".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8)) + "\n")
        os.replace(tmp, path)
    run_id = path.read_text(encoding="utf-8").strip()
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", run_id):
        raise DistillError(f"not a W&B run id ({run_id[:80]!r}); delete the file to log to a new W&B run",
                           where=str(path))
    wandb = sys.modules.get("wandb")
    previous = getattr(wandb, "run", None)
    if previous is not None and ours is not None and previous.id == ours != run_id:
        previous.finish()
        wandb.teardown()
    os.environ.update(WANDB_RUN_ID=run_id, WANDB_RESUME="allow", DISTILL_WANDB_RUN_ID=run_id)
