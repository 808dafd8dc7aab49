"""The fingerprint of a model: what its answers depend on (weights, tokenizer, chat template,
config), not where it lies. Answers are reused across runs only for the same fingerprint.

sha256 over every file of the model's folder (names and bytes). Hashing 270 MB takes about a
second, so the result is cached in <cache dir>/model-fingerprints.json, keyed by the folder
and each file's size and modification time: a file replaced in place hashes again.

    from batchbin.engine.fingerprint import model_fingerprint
    model_fingerprint("/path/to/model")   # 'sha256:…', or None: no local copy to read
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from batchbin.engine.models import cache_dir

CACHE_FILE = "model-fingerprints.json"


def model_folder(model_path: str) -> Path | None:
    """The local folder of a model: the path itself, or a hub id's copy in the Hugging Face cache
    (None where there is none: nothing to fingerprint)."""
    if Path(model_path).is_dir():
        return Path(model_path).resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_path, local_files_only=True))
    except Exception:
        return None


def model_files(folder: Path) -> list[Path]:
    """Every file of the model's folder (hidden ones and subfolders' caches left out), sorted."""
    return sorted(path for path in folder.rglob("*")
                  if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def stat_key(folder: Path, files: list[Path]) -> str:
    """What decides whether the cached fingerprint still holds: the folder and each file's name, size and mtime."""
    stats = [(str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    return hashlib.sha256(json.dumps([str(folder), stats]).encode()).hexdigest()


def hash_files(folder: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def model_fingerprint(model_path: str, cache: Path | None = None) -> str | None:
    """The model's fingerprint (module doc); None when the model has no local folder."""
    folder = model_folder(model_path)
    if folder is None:
        return None
    files = model_files(folder)
    if not files:
        return None
    cache = cache or cache_dir() / CACHE_FILE
    key = stat_key(folder, files)
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    fingerprint = hash_files(folder, files)
    known[key] = fingerprint
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f".{cache.name}.{os.getpid()}")
        partial.write_text(json.dumps(known, indent=1))
        os.replace(partial, cache)
    except OSError:
        pass  # a read-only cache only costs hashing again next time
    return fingerprint
