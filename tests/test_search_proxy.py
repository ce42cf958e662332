"""The bundled proxy task: digits on photos, split by source scan."""

from __future__ import annotations

import json

import numpy as np
import pytest

from efficientformer.data.proxy import _photos, prepare_proxy, render


def test_render_is_a_varied_rgb_image():
    from sklearn.datasets import load_digits

    digit = load_digits().images[0]
    photos = _photos()
    rng = np.random.default_rng(0)
    a, b = render(digit, photos, rng, 32), render(digit, photos, rng, 32)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10  # two renderings of one scan differ a lot
    assert (
        render(digit, photos, np.random.default_rng(5), 32).tobytes()
        == render(digit, photos, np.random.default_rng(5), 32).tobytes()
    )  # and are reproducible from the seed


@pytest.mark.slow
def test_proxy_folder_splits_by_scan(tmp_path):
    root = prepare_proxy(tmp_path, size=32, train_renders=1, eval_renders=1)
    info = json.loads((root / "DONE").read_text())
    assert info["images"] == {"train": 1259, "search": 269, "val": 269}
    scans = {}
    for split in ("train", "search", "val"):
        classes = sorted(p.name for p in (root / split).iterdir())
        assert classes == [str(i) for i in range(10)]
        scans[split] = {f.name.split("_")[0] for f in (root / split).glob("*/*.png")}
    assert not scans["train"] & scans["search"] and not scans["train"] & scans["val"]
    assert not scans["search"] & scans["val"]
    assert prepare_proxy(tmp_path, size=32, train_renders=1, eval_renders=1) == root  # written once
