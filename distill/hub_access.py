"""Can a Hub model id load on this machine? Answered in a second, before a loader spends a minute on retries.

Why: a recipe names its base (``Qwen/Qwen2.5-Math-1.5B``) by Hub id. On a GPU node without internet, which is
where most training runs, transformers retries each file download with backoff (measured: ~50 s of "Retrying in
8s" lines for one tokenizer) before it says the file is missing, and it does that even for a model that *is* in
the local cache, because it first asks the Hub for a newer revision. Here one TCP connect decides: with the Hub
out of reach, the process goes offline (cached models load straight from the cache) and an uncached id fails at
once with what to do about it.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from .errors import DistillError

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def offline_requested() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """False under HF_HUB_OFFLINE, or when a TCP connection to the Hub endpoint (HF_ENDPOINT) fails. Behind an
    HTTPS proxy the direct connect says nothing about the Hub, so the proxy is trusted to reach it."""
    if offline_requested():
        return False
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Make every later Hub call in this process (and its children) read the local cache only, without asking
    the Hub for newer revisions. transformers and datasets ask huggingface_hub.is_offline_mode() at each call."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"


def offline_unless_reachable() -> None:
    """Before a Hub dataset load: with the Hub out of reach, read the datasets cache at once (datasets then says
    plainly what is missing) instead of retrying every request."""
    if not hub_reachable():
        go_offline()


def cached(repo_id: str) -> bool:
    """True when the model's config or tokenizer config is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "tokenizer_config.json"):
        try:
            if isinstance(try_to_load_from_cache(repo_id, filename), str):
                return True
        except ValueError:  # not a valid repo id: the loader will say so
            return True
    return False


def check_loadable(repo_id: str, what: str = "model") -> None:
    """Raise one clear error when ``repo_id`` (a Hub id, not a local folder) cannot load here: not cached and the
    Hub out of reach. When the Hub is out of reach but the model is cached, switch this process offline so the
    loaders use the cache without retries."""
    if hub_reachable():
        return
    why = "HF_HUB_OFFLINE is set" if offline_requested() else "the Hugging Face Hub cannot be reached from here"
    go_offline()
    if cached(repo_id):
        return
    from huggingface_hub import constants

    raise DistillError(f"{what} is neither a local folder nor in the Hugging Face cache ({constants.HF_HUB_CACHE}),"
                       f" and {why}. Download it where there is network (`hf download {repo_id}`) and copy the "
                       f"cache (or set HF_HOME to a shared one), or point the recipe at a local folder",
                       where=repo_id)


def loadable_ref(ref: str, what: str = "model") -> str:
    """``catalog.model_ref`` for a loader: a local folder as an absolute path, else a Hub id checked by
    :func:`check_loadable`."""
    from .catalog import model_ref

    resolved = model_ref(ref)
    if not Path(resolved).exists():
        check_loadable(resolved, what)
    return resolved
