"""Pretrained-weights cache: lookup, SHA-256 checks (known hash and trust-on-first-use), downloads, offline errors.

No test touches the network: ``urlopen`` is replaced by a function that fails the test, and downloads go through a
fake ``hub._fetch``.
"""

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from efficientformer.models import create_model, hub

NAME = "efficientformerv2_s0"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(hub.OFFLINE_ENV, raising=False)
    for name in hub.MODEL_NAMES:
        monkeypatch.delenv(hub.weights_env_var(name), raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def _weights_bytes(tmp_path: Path) -> bytes:
    model = create_model(NAME, num_classes=3)
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(f))
    return f.read_bytes()


def test_urls_cache_paths_and_env_names(tmp_path):
    assert hub.hub_url(NAME) == (
        "https://huggingface.co/timm/efficientformerv2_s0.snap_dist_in1k/resolve/main/model.safetensors"
    )
    assert set(hub.MODEL_NAMES) == set(hub.OFFICIAL_RELEASES) == set(hub.KNOWN_SHA256)
    assert hub.cached_file(NAME) == tmp_path / "cache" / "efficientformerv2_s0.snap_dist_in1k.safetensors"
    assert hub.cache_dir(tmp_path / "x") == tmp_path / "x"
    assert hub.weights_env_var(NAME) == "EFFICIENTFORMER_WEIGHTS_EFFICIENTFORMERV2_S0"
    # No unverified hash is shipped.
    assert all(v is None for v in hub.KNOWN_SHA256.values())
    with pytest.raises(hub.HubError, match="unknown pretrained tag"):
        hub.pretrained_path(NAME, "in22k")
    with pytest.raises(hub.HubError, match="no pretrained weights"):
        hub.pretrained_path("resnet50", None)


def test_cached_file_is_found_and_pinned_on_first_use(tmp_path):
    path = hub.cached_file(NAME)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights v1")
    assert hub.pretrained_path(NAME, None) == path
    side = hub.sidecar(path)
    assert side.read_text().split()[0] == hashlib.sha256(b"weights v1").hexdigest()
    assert hub.pretrained_path(NAME, "snap_dist_in1k") == path  # second load checks against the sidecar


def test_corrupted_file_is_refused_with_fix(tmp_path):
    path = hub.cached_file(NAME)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights v1")
    hub.pretrained_path(NAME, None)
    path.write_bytes(b"weights v1 but bit-rotted")
    with pytest.raises(hub.HubError) as info:
        hub.pretrained_path(NAME, None)
    msg = str(info.value)
    assert "changed since it was first used" in msg and f"delete {path}" in msg and "\n" not in msg
    # create_model(pretrained=True) refuses it too, before any weight is loaded.
    with pytest.raises(hub.HubError, match="SHA-256"):
        create_model(NAME, pretrained=True)


def test_known_hash_is_enforced(tmp_path, monkeypatch):
    path = hub.cached_file(NAME)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"the real file")
    monkeypatch.setitem(hub.KNOWN_SHA256, NAME, hashlib.sha256(b"the real file").hexdigest())
    assert hub.pretrained_path(NAME, None) == path
    path.write_bytes(b"a different file")
    hub.sidecar(path).unlink()  # no sidecar to blame: the known hash alone must catch it
    with pytest.raises(hub.HubError, match="corrupted or not the published file"):
        hub.pretrained_path(NAME, None)


def test_offline_message_names_url_and_exact_path(monkeypatch):
    def unreachable(url, dest, timeout=60.0):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(hub, "_fetch", unreachable)
    path = hub.cached_file(NAME)
    with pytest.raises(hub.HubError) as info:
        hub.pretrained_path(NAME, None)
    msg = str(info.value)
    assert hub.hub_url(NAME) in msg and str(path) in msg and "name resolution" in msg and "\n" not in msg
    assert not path.exists() and not list(path.parent.glob("*.part"))  # no half file left behind
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    with pytest.raises(hub.HubError, match=f"disabled by {hub.OFFLINE_ENV}.*download https://huggingface.co"):
        hub.pretrained_path(NAME, None)


def test_download_is_atomic_verified_and_loadable(tmp_path, monkeypatch):
    payload = _weights_bytes(tmp_path)
    calls = []

    def fake_fetch(url, dest, timeout=60.0):
        calls.append(url)
        dest.write(payload)

    monkeypatch.setattr(hub, "_fetch", fake_fetch)
    path = hub.pretrained_path(NAME, None)
    assert calls == [hub.hub_url(NAME)] and path.read_bytes() == payload
    assert hub.sidecar(path).read_text().split()[0] == hashlib.sha256(payload).hexdigest()
    assert hub.pretrained_path(NAME, None) == path and len(calls) == 1  # cached: no second download
    model = create_model(NAME, num_classes=3, pretrained=True)  # the factory goes through pretrained_path
    assert model.head.out_features == 3


def test_download_with_wrong_known_hash_is_discarded(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "_fetch", lambda url, dest, timeout=60.0: dest.write(b"tampered"))
    monkeypatch.setitem(hub.KNOWN_SHA256, NAME, "0" * 64)
    with pytest.raises(hub.HubError, match="does not match its known SHA-256"):
        hub.pretrained_path(NAME, None)
    assert not hub.cached_file(NAME).exists()


def test_failed_download_keeps_no_partial_file(monkeypatch):
    def half_then_fail(url, dest, timeout=60.0):
        dest.write(b"half a file")
        raise TimeoutError("timed out")

    monkeypatch.setattr(hub, "_fetch", half_then_fail)
    with pytest.raises(hub.HubError, match="timed out"):
        hub.pretrained_path(NAME, None)
    cache = hub.cache_dir()
    assert not hub.cached_file(NAME).exists() and list(cache.iterdir()) == []


def test_env_var_points_at_a_file(tmp_path, monkeypatch):
    f = tmp_path / "eformer_s0_450.pth"
    torch.save({"model": {}}, f)
    monkeypatch.setenv(hub.weights_env_var(NAME), str(f))
    assert hub.pretrained_path(NAME, None) == f
    monkeypatch.setenv(hub.weights_env_var(NAME), str(tmp_path / "missing.pth"))
    with pytest.raises(hub.HubError, match="not a file"):
        hub.pretrained_path(NAME, None)
