"""Pushes an exported folder to the Hugging Face Hub, or says what would be pushed (``--dry-run``).

The token comes from the environment (``HF_TOKEN``) or huggingface_hub's own login, and is handed to
``HfApi`` only: it is never printed, logged or written to a manifest. ``api`` is injectable so tests can stand in
for the Hub's servers, which cannot be reached here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import DistillError
from ..manifest import redact

REQUIRED = ("config.json", "README.md", "generation_config.json")


def plan_upload(folder: str | Path) -> list[tuple[str, int]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DistillError("export folder not found", where=str(folder))
    missing = [f for f in REQUIRED if not (folder / f).exists()]
    if missing:
        raise DistillError(f"not a complete export (missing {', '.join(missing)})", where=str(folder))
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def push(folder: str | Path, repo_id: str, *, private: bool = True, dry_run: bool = False,
         api: Any = None, commit_message: str = "Upload distilled model") -> dict[str, Any]:
    files = plan_upload(folder)
    summary = {"repo_id": repo_id, "private": private, "files": files, "bytes": sum(s for _, s in files)}
    if dry_run:
        return {**summary, "pushed": False}
    if api is None:
        from huggingface_hub import HfApi

        token = os.environ.get("HF_TOKEN")
        api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                   commit_message=commit_message)
    except Exception as exc:  # noqa: BLE001 - network and auth errors become one clear line
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise DistillError(redact(f"push failed: {msg}"), where=repo_id) from None
    return {**summary, "pushed": True, "url": str(url), "commit": str(getattr(commit, "oid", commit))}
