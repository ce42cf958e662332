"""Data: transforms, the bundled digits folder, folder checks, tolerant loading, samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from efficientformer.data.folder import build_datasets, collate_skip
from efficientformer.data.samplers import EvalSampler, TrainSampler
from efficientformer.data.transforms import eval_transform
from efficientformer.runtime.loaders import epoch_loader
from efficientformer.utils.seeding import derive_seed


def _write_folder(root, classes=("a", "b"), n=4, size=40, splits=("train", "val")):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png"
                )
    return root


def test_eval_transform_is_the_published_protocol():
    tf = eval_transform()
    assert tf.resize_to == 256 and tf.interpolation == "bicubic" and tf.img_size == 224
    img = Image.fromarray(np.zeros((300, 500, 3), dtype=np.uint8))
    x = tf(img)
    assert x.shape == (3, 224, 224)
    # black normalised with ImageNet statistics
    assert torch.allclose(x[:, 0, 0], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]), atol=1e-5)
    assert eval_transform(64).resize_to == 73 and eval_transform(256).resize_to == 292


def test_train_transform_shapes_and_a_bad_augment_spec():
    from efficientformer.train.config import TrainConfig, build_config
    from efficientformer.train.engine import train_transform

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8))
    assert train_transform(TrainConfig(img_size=64))(img).shape == (3, 64, 64)
    with pytest.raises(ValueError, match="not a timm auto-augment spec"):
        build_config(None, {"auto_augment": "rand-bogus9"})


def test_digits_folder_written_once(tmp_path):
    pytest.importorskip("sklearn")
    from efficientformer.data.digits import prepare_digits

    root = prepare_digits(tmp_path, size=32)
    train, val = build_datasets(root, eval_transform(32), eval_transform(32))
    assert train.classes == [str(i) for i in range(10)] and len(train) + len(val) == 1797
    assert 340 <= len(val) <= 380  # 20% held out, stratified
    assert Image.open(train.samples[0][0]).size == (32, 32) and Image.open(train.samples[0][0]).mode == "RGB"
    stamp = (root / "DONE").stat().st_mtime_ns
    assert prepare_digits(tmp_path, size=32) == root and (root / "DONE").stat().st_mtime_ns == stamp


def test_bad_folders_give_one_line_errors(tmp_path):
    tf = eval_transform(32)
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        build_datasets(tmp_path / "missing", tf, tf)
    (tmp_path / "x" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no val/ folder"):
        build_datasets(tmp_path / "x", tf, tf)
    (tmp_path / "x" / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="no class subfolders"):
        build_datasets(tmp_path / "x", tf, tf)
    (tmp_path / "x" / "train" / "cat").mkdir()
    (tmp_path / "x" / "val" / "cat").mkdir()
    with pytest.raises(FileNotFoundError, match="cat"):  # a class folder without images
        build_datasets(tmp_path / "x", tf, tf)
    root = _write_folder(tmp_path / "y")
    _write_folder(tmp_path / "y", classes=("c",), splits=("val",))
    with pytest.raises(ValueError, match="different class folders.*only in val: \\['c'\\]"):
        build_datasets(root, tf, tf)


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    root = _write_folder(tmp_path / "d")
    (root / "train" / "a" / "broken.png").write_bytes(b"not a png at all")
    train, _ = build_datasets(root, eval_transform(32), eval_transform(32))
    batch = collate_skip([train[i] for i in range(len(train))])
    images, targets, skipped = batch
    assert skipped == 1 and images.shape[0] == len(train) - 1 == targets.shape[0]


@pytest.mark.parametrize("n,world", [(10, 2), (11, 3), (5, 8)])
def test_eval_sampler_counts_every_image_once(n, world):
    seen = sorted(i for r in range(world) for i in EvalSampler(n, r, world))
    assert seen == list(range(n))


def test_train_sampler_ranks_cover_the_single_process_batches():
    n, world, b = 37, 2, 4
    single = list(TrainSampler(n, 0, 1, seed=3))
    ranks = [list(TrainSampler(n, r, world, seed=3)) for r in range(world)]
    for step in range(len(ranks[0]) // b):
        together = sorted(i for r in ranks for i in r[step * b : (step + 1) * b])
        assert together == sorted(single[step * world * b : (step + 1) * world * b])
    s = TrainSampler(n, seed=3)
    s.set_epoch(1)
    assert list(s) != single  # reshuffled per epoch
    rep = TrainSampler(600, 0, 1, seed=0, repeats=3)
    assert len(rep) == 512 and len(set(rep)) < 200  # floor(600/256)*256 samples, ~1/3 unique


def test_epoch_streams_keep_the_seed_formula_that_checkpoints_were_written_with():
    # Resumed runs rebuild per-epoch streams from derive_seed: its values (and so the epoch permutations of runs
    # already checkpointed) must not change.
    assert [derive_seed(s, e) for s, e in ((0, 0), (0, 7), (3, 1), (42, 299))] == [0, 7, 3_000_010, 42_000_425]
    s = TrainSampler(50, seed=42)
    s.set_epoch(5)
    assert list(s) == torch.randperm(50, generator=torch.Generator().manual_seed(42_000_131)).tolist()


def test_bad_training_files_incl_a_decompression_bomb_are_skipped_counted_and_named(tmp_path):
    from efficientformer.data.folder import SkippedImageWarning
    from efficientformer.data.images import DEFAULT_MAX_PIXELS

    root = _write_folder(tmp_path / "d")
    side = int(DEFAULT_MAX_PIXELS**0.5) + 100  # a bilevel PNG of a few kB announcing > 89 MP
    Image.new("1", (side, side), 0).save(root / "train" / "a" / "bomb.png")
    Image.new("L", (30000, 1)).save(root / "train" / "b" / "strip.png")
    (root / "train" / "b" / "cut.png").write_bytes((root / "train" / "b" / "0.png").read_bytes()[:60])
    train, _ = build_datasets(root, eval_transform(32), eval_transform(32))
    with pytest.warns(SkippedImageWarning) as record:
        images, targets, skipped = collate_skip([train[i] for i in range(len(train))])
    assert skipped == 3 and images.shape[0] == len(train) - 3
    named = " ".join(str(w.message) for w in record)
    assert "bomb.png" in named and "decompression bomb" in named and "strip.png" in named and "cut.png" in named


def test_unlistable_class_subfolder_is_named(tmp_path, monkeypatch):
    import os

    from efficientformer.data.folder import SkippedImageWarning

    root = _write_folder(tmp_path / "d")
    (root / "train" / "a" / "more").mkdir()
    Image.new("RGB", (8, 8)).save(root / "train" / "a" / "more" / "x.png")
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("more"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.warns(SkippedImageWarning, match="more: cannot list folder"):
        train, _ = build_datasets(root, eval_transform(32), eval_transform(32))
    assert len(train.scan_problems) == 1 and not any("more" in p for p, _ in train.samples)


def test_max_pixels_reaches_both_splits(tmp_path):
    """``max_pixels`` (config key / ``--max-pixels``) is the limit of the train and val readers: over it, skipped."""
    from efficientformer.data.folder import SkippedImageWarning

    root = _write_folder(tmp_path / "d", size=40)  # 1600-pixel images
    train, val = build_datasets(root, eval_transform(32), eval_transform(32), max_pixels=1599)
    for split in (train, val):
        with pytest.warns(SkippedImageWarning, match="over the limit of 1,599"):
            images, _, skipped = collate_skip([split[i] for i in range(len(split))])
        assert images is None and skipped == len(split)
    train, val = build_datasets(root, eval_transform(32), eval_transform(32), max_pixels=1600)
    assert collate_skip([val[i] for i in range(len(val))])[2] == 0


class _Noisy(torch.utils.data.Dataset):
    """Sample i is (i, a draw from the global torch RNG): the draw shows which augmentation seed it got."""

    def __len__(self) -> int:
        return 23

    def __getitem__(self, i: int):
        return torch.tensor(i), torch.rand(())


def test_epoch_loader_resumed_mid_epoch_gives_the_rest_of_the_straight_epoch():
    make = epoch_loader(_Noisy(), TrainSampler(23, seed=5), seed=5, batch_size=4, workers=0, drop_last=True)
    straight = [(i.tolist(), r.tolist()) for i, r in make(2, 0)]
    assert len(straight) == 5
    assert [(i.tolist(), r.tolist()) for i, r in make(2, 3)] == straight[3:]
    assert [(i.tolist(), r.tolist()) for i, r in make(3, 0)] != straight  # another epoch, another order and draws
