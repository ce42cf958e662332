"""A Hugging Face Hub cache built on disk with the real layout, for loading offline in tests (no network).

``<cache>/models--ORG--REPO/blobs/<hash>``, ``refs/<revision>`` (the commit) and ``snapshots/<commit>/<file>``
linking to its blob, as ``huggingface_hub`` writes it; large files are named by their SHA-256 (as Git LFS files are).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file


def add_repo(cache: Path, repo_id: str, files: dict[str, bytes], revision: str = "main", commit: str = "") -> Path:
    """Put ``files`` (name -> content) into ``cache`` as revision ``revision`` of model repository ``repo_id``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = commit or hashlib.sha1(repr(sorted(files)).encode() + revision.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for name, content in files.items():
        lfs = name.endswith((".safetensors", ".bin"))
        blob_name = hashlib.sha256(content).hexdigest() if lfs else hashlib.sha1(content).hexdigest()
        blob = repo / "blobs" / blob_name
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


def safetensors_bytes(state: dict[str, torch.Tensor], tmp: Path, metadata: dict | None = None) -> bytes:
    path = tmp / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path.read_bytes()


def json_bytes(obj: dict) -> bytes:
    return json.dumps(obj, indent=2).encode()


def offline_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache as the default one, offline: reading it needs no network, and a miss fails at once.
    (Each test file wraps this in its own ``hub_cache`` fixture.)"""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache
