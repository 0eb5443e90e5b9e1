"""Stage manifests: what went in, which config, which package versions, what came out.

A stage writes ``stage.json`` (its config fingerprint) when it starts and ``manifest.json`` atomically when it
finishes. Only a ``manifest.json`` with ``status: complete`` and the same fingerprint marks a stage as done, so a
half-written stage is never taken as complete and a changed recipe is never silently mixed with old output.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import DistillError

PACKAGES = ("distill", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "math-verify",
            "bitsandbytes", "huggingface_hub", "vllm")
SECRET_ENV = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD)", re.I)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def secret_values() -> list[str]:
    """Values of environment variables that look like credentials (HF_TOKEN, DEEPSEEK_API_KEY, ...)."""
    return [v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= 8]


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """Replace any credential value found in strings: manifests, logs and cards never carry a token."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, "***")
        return obj
    if isinstance(obj, dict):
        return {k: redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    return obj


def write_json_atomic(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(redact(data), fh, indent=2, ensure_ascii=False, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DistillError("file not found", where=str(path)) from None
    except json.JSONDecodeError as exc:
        raise DistillError(f"invalid JSON ({exc.msg})", where=f"{path}:{exc.lineno}") from None


def config_changes(before: Any, after: Any, shown: int = 3) -> str:
    """The keys that differ between two stage configs, as ``key: old -> new`` (the first ``shown``), or "" when the
    configs are equal: a refused rerun says what changed, not two fingerprints."""
    def flat(value: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            value = dict(enumerate(value))  # a list of sections (eval.benchmarks): benchmarks.0.limit
        if isinstance(value, dict):
            return {k: v for key, sub in value.items() for k, v in flat(sub, f"{prefix}{key}.").items()} or \
                {prefix.rstrip("."): {}}
        return {prefix.rstrip("."): value}

    def show(values: dict[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "(unset)"

    old, new = flat(before or {}), flat(after or {})
    keys = [k for k in dict.fromkeys([*old, *new]) if show(old, k) != show(new, k)]
    parts = [f"{k}: {show(old, k)} -> {show(new, k)}" for k in keys[:shown]]
    return "; ".join(parts) + (f"; and {len(keys) - shown} more" if len(keys) > shown else "")


class Stage:
    """Bookkeeping for one stage's output folder."""

    def __init__(self, name: str, folder: str | Path, fingerprint: str, config: Any = None):
        self.name, self.folder, self.fingerprint, self.config = name, Path(folder), fingerprint, config
        self.started = time.time()

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    @property
    def marker_path(self) -> Path:
        return self.folder / "stage.json"

    def is_complete(self) -> bool:
        if not self.manifest_path.exists():
            return False
        m = read_json(self.manifest_path)
        return m.get("status") == "complete" and m.get("fingerprint") == self.fingerprint

    def check_claim(self) -> None:
        """Refuse when the folder's ``stage.json`` marker was written by a different config: output of two recipes
        never mixes in one folder. ``begin`` calls it as the stage starts, and ``run_pipeline`` for every stage
        before the first one runs, so a changed recipe is refused at once, not after minutes of earlier stages."""
        if not self.marker_path.exists():
            return
        prev = read_json(self.marker_path)
        if prev.get("fingerprint") != self.fingerprint:
            changed = config_changes(prev.get("config"), self.config)
            what = (f"a different config ({redact(changed)})" if changed else
                    "a different recipe (a setting outside this stage's own section changed: an earlier stage's, "
                    "or a run-level one)")
            raise DistillError(f"holds output of stage '{self.name}' made with {what}; use a new --out or --force",
                               where=str(self.folder))

    def release(self) -> None:
        """Give up the folder's claim (its ``stage.json``), for a stage that failed before making anything a rerun
        would build on: the rerun, its input or config corrected, is then not refused as 'a different config'."""
        self.marker_path.unlink(missing_ok=True)

    def begin(self, force: bool = False) -> None:
        """Claim the folder for this config; refuse to mix output of a different config into it."""
        if force and self.folder.exists():
            shutil.rmtree(self.folder)
        self.check_claim()
        if self.manifest_path.exists():
            self.manifest_path.unlink()
        write_json_atomic(self.marker_path,
                          {"stage": self.name, "fingerprint": self.fingerprint, "config": self.config})
        self.started = time.time()

    def finish(self, *, inputs: dict[str, Any] | None = None, counts: dict[str, Any] | None = None,
               **extra: Any) -> dict[str, Any]:
        manifest = {
            "stage": self.name, "status": "complete", "fingerprint": self.fingerprint,
            "config": self.config, "inputs": inputs or {}, "counts": counts or {},
            "seconds": round(time.time() - self.started, 2), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": package_versions(), **extra,
        }
        write_json_atomic(self.manifest_path, manifest)
        return manifest

    def manifest(self) -> dict[str, Any]:
        return read_json(self.manifest_path)

    def reused(self) -> dict[str, Any]:
        """The finished manifest, marked as reused (the stage was skipped on this run)."""
        return {**self.manifest(), "reused": True}
