"""Pretrained ImageNet-1k weights: where they come from, where they are cached, and how they are verified.

Source. ``create_model(name, pretrained=True)`` and ``--pretrained`` fetch the hub copies in timm's layout,
``https://huggingface.co/timm/<name>.snap_dist_in1k/resolve/main/model.safetensors``, which exist for all seven
models (timm converted the official weights; V1-L1 is the 1000-epoch checkpoint, V2 the 450-epoch ones). The
official releases are Google-Drive files (``efficientformer_l{1,3,7}_300d.pth``, ``eformer_{s0,s1,s2,l}_450.pth``,
listed in :data:`OFFICIAL_RELEASES`); Drive serves them behind a confirmation page, so they are not downloaded
automatically, but a downloaded copy can be used directly (see "Local files" below): ``load_checkpoint`` reads the
official layout.

Cache. ``$EFFICIENTFORMER_CACHE`` (default ``~/.cache/efficientformer``), one file per model and tag:
``<cache>/<name>.<tag>.safetensors``. Downloads go to a temporary file in the cache folder and are renamed into
place only when complete, so an interrupted download never leaves a file that looks valid.

Integrity (SHA-256), stated plainly: this toolkit was written without network access to the hub, so **no hash of
the published files has been verified by us** and :data:`KNOWN_SHA256` is empty (``None`` for every model). We do
not ship hashes we have not checked. Instead:

* if a known hash exists for a file it is enforced on every load (a mismatch is refused);
* otherwise the SHA-256 of the file is recorded in a ``.sha256`` sidecar when it is first downloaded (or first
  found in the cache) and every later load checks the file against it (trust on first use). This catches a file
  that was corrupted or replaced after the first use; it cannot prove that the first download was authentic. HTTPS
  to huggingface.co is what vouches for that.

A file that fails its check is refused, never loaded; the error says to delete it (and its sidecar) and fetch it
again.

Local files. ``EFFICIENTFORMER_WEIGHTS_<NAME>`` (the model name upper-cased, e.g.
``EFFICIENTFORMER_WEIGHTS_EFFICIENTFORMERV2_S0``) points at a weights file of any layout ``load_checkpoint`` reads,
e.g. an official ``eformer_s0_450.pth``; it is used as given (the user chose it) and no hash is applied. In Python
and on the command line, ``checkpoint=`` / ``--checkpoint`` does the same for one call.

Offline. ``EFFICIENTFORMER_OFFLINE=1`` forbids downloads. Then, or when the network is unreachable, the error is one
line naming the URL to fetch and the exact path to save it under.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..utils.io import atomic_write_text
from .facts import FACTS, HUB_TAG, HUB_URL, CheckpointSource

DEFAULT_TAG = HUB_TAG
CACHE_ENV = "EFFICIENTFORMER_CACHE"
OFFLINE_ENV = "EFFICIENTFORMER_OFFLINE"
WEIGHTS_ENV_PREFIX = "EFFICIENTFORMER_WEIGHTS_"

#: Models with hub weights: every row of the facts table.
MODEL_NAMES = tuple(FACTS)

#: SHA-256 of each hub file, enforced when not None (from the facts table). All None on purpose: see above.
KNOWN_SHA256: dict[str, str | None] = {name: f.hub_sha256 for name, f in FACTS.items()}

#: The earlier name of :class:`~efficientformer.models.facts.CheckpointSource`.
OfficialRelease = CheckpointSource

#: Official PyTorch checkpoints (Google Drive links of the official README). Not downloaded automatically.
OFFICIAL_RELEASES: dict[str, tuple[CheckpointSource, ...]] = {name: f.official for name, f in FACTS.items()}


class HubError(ValueError):
    """Pretrained weights that cannot be found, fetched or trusted. The message is one actionable line."""


# -- names and paths ---------------------------------------------------------------------------------------------
def hub_id(model_name: str, tag: str | None = None) -> str:
    return f"timm/{model_name}.{tag or DEFAULT_TAG}"


def hub_url(model_name: str, tag: str | None = None) -> str:
    _check_name(model_name, tag)
    return HUB_URL.format(name=model_name, tag=tag or DEFAULT_TAG)


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """``override``, else ``$EFFICIENTFORMER_CACHE``, else ``~/.cache/efficientformer``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "efficientformer"


def cached_file(model_name: str, tag: str | None = None, cache: str | os.PathLike | None = None) -> Path:
    """Where the weights of ``model_name.tag`` live in the cache (whether or not they are there yet)."""
    _check_name(model_name, tag)
    return cache_dir(cache) / f"{model_name}.{tag or DEFAULT_TAG}.safetensors"


def weights_env_var(model_name: str) -> str:
    return WEIGHTS_ENV_PREFIX + model_name.upper().replace("-", "_").replace(".", "_")


def _check_name(model_name: str, tag: str | None) -> None:
    if model_name not in MODEL_NAMES:
        raise HubError(f"no pretrained weights for {model_name!r}; models with weights: {', '.join(MODEL_NAMES)}")
    if tag not in (None, DEFAULT_TAG):
        raise HubError(f"unknown pretrained tag {tag!r} for {model_name}; the only tag is {DEFAULT_TAG!r}")


# -- hashing -----------------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify_file(path: Path, model_name: str, url: str) -> str:
    """Check ``path`` against the known hash, else against its sidecar (writing one if absent); return the hash."""
    actual = sha256_file(path)
    known = KNOWN_SHA256.get(model_name)
    side = sidecar(path)
    fix = f"delete {path} and {side.name} and run again to download it afresh (or fetch {url} by hand)"
    if known:
        if actual != known.lower():
            raise HubError(
                f"{path} is corrupted or not the published file: SHA-256 {actual[:16]}... != {known[:16]}...; {fix}"
            )
    elif side.exists():
        recorded = side.read_text(encoding="utf-8").split()[0].strip().lower() if side.stat().st_size else ""
        if actual != recorded:
            raise HubError(
                f"{path} changed since it was first used: SHA-256 {actual[:16]}... != recorded "
                f"{recorded[:16] or '?'}...; {fix}"
            )
    if not side.exists():
        # Trust on first use: remember what we saw so later corruption or replacement is caught.
        atomic_write_text(side, f"{actual}  {path.name}\n")
    return actual


# -- download ----------------------------------------------------------------------------------------------------
def _fetch(url: str, dest, timeout: float = 60.0) -> None:
    """Stream ``url`` into the open binary file ``dest``. Tests replace this function; it is the only network call."""
    request = urllib.request.Request(url, headers={"User-Agent": "efficientformer"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - fixed https URL
        total = int(response.headers.get("Content-Length") or 0)
        bar_args = dict(unit="B", unit_scale=True, desc="download", file=sys.stderr, disable=not sys.stderr.isatty())
        with tqdm(total=total or None, **bar_args) as bar:
            while block := response.read(1 << 20):
                dest.write(block)
                bar.update(len(block))


def download(model_name: str, tag: str | None, path: Path) -> Path:
    """Download the hub file to ``path`` (temporary file, then atomic rename) and verify it."""
    url = hub_url(model_name, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _fetch(url, f)
            f.flush()
            os.fsync(f.fileno())
        known = KNOWN_SHA256.get(model_name)
        if known and sha256_file(tmp) != known.lower():
            raise HubError(
                f"the file downloaded from {url} does not match its known SHA-256; it was discarded. "
                "Try again later, or fetch it by hand and compare"
            )
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        reason = getattr(err, "reason", None) or err
        raise HubError(offline_message(model_name, tag, path, f"download failed: {reason}")) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    sidecar(path).unlink(missing_ok=True)  # a stale sidecar from a deleted file must not condemn the new one
    verify_file(path, model_name, url)
    return path


def offline_message(model_name: str, tag: str | None, path: Path, why: str) -> str:
    return (
        f"pretrained weights for {model_name} are not cached and cannot be downloaded ({why}); "
        f"download {hub_url(model_name, tag)} and save it as {path} "
        f"(or set {weights_env_var(model_name)}=/path/to/weights, or pass a checkpoint file)"
    )


# -- the entry point the model factory calls ---------------------------------------------------------------------
def pretrained_path(
    model_name: str,
    tag: str | None = None,
    *,
    cache: str | os.PathLike | None = None,
    allow_download: bool | None = None,
) -> Path:
    """Path of verified pretrained weights for ``model_name`` (downloading them on first use).

    Order: ``$EFFICIENTFORMER_WEIGHTS_<NAME>`` (a file used as given), then the cache (hash-checked), then a
    download (unless ``allow_download=False`` or ``$EFFICIENTFORMER_OFFLINE`` is set). Raises :class:`HubError`
    with one line saying what to do.
    """
    _check_name(model_name, tag)
    override = os.environ.get(weights_env_var(model_name))
    if override:
        file = Path(override).expanduser()
        if not file.is_file():
            raise HubError(f"{weights_env_var(model_name)} points at {file}, which is not a file")
        return file
    path = cached_file(model_name, tag, cache)
    if path.is_file():
        verify_file(path, model_name, hub_url(model_name, tag))
        return path
    if allow_download is None:
        allow_download = os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")
    if not allow_download:
        raise HubError(offline_message(model_name, tag, path, f"downloads are disabled by {OFFLINE_ENV}"))
    return download(model_name, tag, path)
