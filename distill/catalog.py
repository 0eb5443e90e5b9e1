"""Finds recipes in the YAML catalogs (``teachers/``, ``students/``, ``data/``, ``eval/``, ``recipes/``).

Catalogs live at the project root so users can read and copy them (torchtune style). ``DISTILL_HOME`` points
elsewhere, for an installed package used outside its checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DistillError, first_line

KINDS = ("teachers", "students", "data", "eval", "recipes")


def project_root() -> Path:
    env = os.environ.get("DISTILL_HOME")
    return Path(env) if env else Path(__file__).resolve().parent.parent


def resolve_path(ref: str) -> Path:
    """A path in a recipe is relative to the project root unless absolute or existing from the cwd."""
    p = Path(ref)
    if p.is_absolute() or p.exists():
        return p
    return project_root() / p


LOCAL_PREFIXES = ("/", "./", "../", "~") + tuple(f"{k}/" for k in KINDS)


def model_ref(ref: str) -> str:
    """A model reference as loaders should see it: an existing local folder (absolute path), else a Hub id.

    References that are clearly paths (absolute, relative, or inside a catalog folder such as ``teachers/``) but do
    not exist fail at once, instead of being tried on the Hub with network retries."""
    p = resolve_path(ref)
    if p.exists():
        return str(p)
    if ref.startswith(LOCAL_PREFIXES) or ref.count("/") > 1:
        raise DistillError("model folder not found", where=ref)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError as exc:  # "not a valid id!!": no folder, and no Hub id either (not an offline matter)
        raise DistillError(f"neither a local folder nor a Hugging Face repo id ({first_line(exc, 160).rstrip('.')})",
                           where=ref) from None
    return ref


def find_entry(kind: str, ref: str) -> Path:
    """A path to a YAML file, or the name of an entry in the ``kind`` catalog."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") or os.sep in ref:
        if p.exists():
            return p
        raise DistillError("recipe file not found", where=ref)
    candidate = project_root() / kind / f"{ref}.yaml"
    if candidate.exists():
        return candidate
    names = ", ".join(list_entries(kind)) or "none"
    raise DistillError(f"no entry named '{ref}' in the {kind}/ catalog (available: {names})")


def list_entries(kind: str) -> list[str]:
    folder = project_root() / kind
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.exists() else []
