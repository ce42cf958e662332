"""Fast unit tests of the dense-prediction area: backbone, frozen BN, data, evaluators, config, CLI errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientformer.data.samplers import TrainSampler
from efficientformer.dense.backbone import BackboneWithFPN, EfficientFormerBackbone, FrozenBatchNorm2d
from efficientformer.models import create_model, list_models
from efficientformer.runtime.config import load_config
from efficientformer.runtime.schedule import WarmupSchedule

torch.set_num_threads(1)  # the CI/dev machine is shared: one thread is much faster than two contended ones


@pytest.mark.parametrize("name", list_models())
def test_backbone_shapes_all_variants_non_square(name):
    bb = EfficientFormerBackbone(name, img_size=(96, 160)).eval()
    x = torch.randn(1, 3, 90, 150)  # not multiples of 32: padded to 96x160 inside, outputs cropped back
    with torch.no_grad():
        outs = bb(x)
    assert len(outs) == 4
    for out, c, s in zip(outs, bb.channels, (4, 8, 16, 32), strict=True):
        assert out.shape == (1, c, math.ceil(90 / s), math.ceil(150 / s))
    assert bb.channels == list(create_model(name, features_only=True).spec.widths)


def test_backbone_padding_matches_manual_pad_and_out_indices():
    torch.manual_seed(0)
    bb = EfficientFormerBackbone("efficientformerv2_s0", img_size=64, out_indices=(1, 3)).eval()
    x = torch.randn(2, 3, 50, 70)
    padded = torch.nn.functional.pad(x, (0, 96 - 70, 0, 64 - 50))
    with torch.no_grad():
        outs = bb(x)
        full = bb.body(padded)
    assert [tuple(o.shape[-2:]) for o in outs] == [(7, 9), (2, 3)]
    assert torch.allclose(outs[0], full[1][..., :7, :9])
    assert torch.allclose(outs[1], full[3][..., :2, :3])
    with pytest.raises(ValueError, match="out_indices"):
        EfficientFormerBackbone("efficientformerv2_s0", out_indices=(4,))


def test_backbone_loads_classifier_checkpoint_and_resamples_biases():
    cls = create_model("efficientformerv2_s0", img_size=224)
    bb = EfficientFormerBackbone("efficientformerv2_s0", checkpoint=cls.state_dict(), img_size=128)
    assert bb.load_report is not None
    assert any("head" in k for k in bb.load_report.dropped)
    assert bb.load_report.resampled  # 7x7 bias tables -> 4x4 for the 128-px grid
    sd = bb.body.state_dict()
    assert torch.equal(sd["stem.conv1.conv.weight"], cls.state_dict()["stem.conv1.conv.weight"])


def test_frozen_bn_really_frozen():
    torch.manual_seed(0)
    bb = EfficientFormerBackbone("efficientformerv2_s0", img_size=64, freeze_bn=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())
    frozen = [m for m in bb.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(len(list(m.parameters())) == 0 for m in frozen)
    before = {
        k: v.clone() for k, v in bb.state_dict().items() if "running" in k or k.endswith(("bn.weight", "bn.bias"))
    }
    assert before
    opt = torch.optim.SGD([p for p in bb.parameters() if p.requires_grad], lr=0.1)
    bb.train()
    loss = sum(o.square().mean() for o in bb(torch.randn(2, 3, 64, 64) * 3 + 1))
    loss.backward()
    opt.step()
    after = bb.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    # the rest of the network did train
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.parameters())


def test_frozen_bn_keyword_is_the_deprecated_spelling_of_freeze_bn():
    with pytest.warns(DeprecationWarning, match="use freeze_bn="):
        bb = EfficientFormerBackbone("efficientformerv2_s0", img_size=64, frozen_bn=True)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())


def test_frozen_bn_equals_eval_batchnorm():
    bn = torch.nn.BatchNorm2d(8)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 8, 5, 5)
    frozen = FrozenBatchNorm2d.from_batchnorm(bn).train()
    assert torch.allclose(frozen(x), bn.eval()(x), atol=1e-6)


def test_frozen_stages_stay_eval_and_untrainable():
    bb = EfficientFormerBackbone("efficientformerv2_s0", img_size=64, frozen_stages=1)
    bb.train()
    assert not bb.body.stem.training and not bb.body.stages[1].training and bb.body.stages[2].training
    assert all(not p.requires_grad for p in bb.body.stages[0].parameters())
    assert all(p.requires_grad for p in bb.body.stages[3].parameters())


def test_output_norm_official_default_trainable_and_per_sample():
    torch.manual_seed(0)
    v1 = EfficientFormerBackbone("efficientformer_l1", img_size=64)
    v2 = EfficientFormerBackbone("efficientformerv2_s0", img_size=64)
    gns = [m for m in v1.norms if isinstance(m, torch.nn.GroupNorm)]
    assert v1.output_norm and len(gns) == 4
    assert [(m.num_groups, m.num_channels) for m in gns] == [(1, c) for c in v1.channels]
    assert not v2.output_norm and not any(isinstance(m, torch.nn.GroupNorm) for m in v2.modules())
    # overrides both ways
    off = EfficientFormerBackbone("efficientformer_l1", img_size=64, output_norm=False)
    assert not off.output_norm and not any(isinstance(m, torch.nn.GroupNorm) for m in off.modules())
    assert EfficientFormerBackbone("efficientformerv2_s0", img_size=64, output_norm=True).output_norm
    # trainable, even with every stage frozen
    frozen = EfficientFormerBackbone("efficientformer_l1", img_size=64, frozen_stages=3)
    names = {n for n, p in frozen.named_parameters() if p.requires_grad}
    assert names == {f"norms.{i}.{w}" for i in range(4) for w in ("weight", "bias")}

    # each sample normalised on its own, over the cropped map (not the padding): two inputs of very different
    # scale, sides not multiples of 32
    x = torch.randn(1, 3, 70, 90)
    x = torch.cat([x, 10 * x.flip(-1) + 3])
    v1.eval()
    with torch.no_grad():
        outs = v1(x)
        raw_norms, v1.norms = v1.norms, torch.nn.ModuleList(torch.nn.Identity() for _ in range(4))
        raws = v1(x)
        v1.norms = raw_norms
    for out, raw in zip(outs, raws, strict=True):
        flat = out.flatten(1)
        assert torch.allclose(flat.mean(1), torch.zeros(2), atol=1e-4)
        raw_var = raw.flatten(1).var(1, unbiased=False)
        assert torch.allclose(flat.var(1, unbiased=False), raw_var / (raw_var + 1e-5), atol=1e-4)  # 1 but for eps
        assert torch.allclose(out, torch.nn.functional.group_norm(raw, 1), atol=1e-5)
        assert not torch.allclose(raw_var, torch.ones(2), atol=1e-1)
    # gradients reach the norm parameters
    v1.train()
    sum(o[:, :1].sum() for o in v1(x[:1, :, :64, :64])).backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in gns)


def test_output_norm_config_override():
    from efficientformer.dense.segmentation import SegmentConfig, SemanticFPN

    small = {"num_classes": 3, "crop_size": 64, "fpn_channels": 8, "head_channels": 8}
    assert SemanticFPN(SegmentConfig(model="efficientformer_l1", **small)).backbone.output_norm
    assert not SemanticFPN(SegmentConfig(model="efficientformer_l1", output_norm=False, **small)).backbone.output_norm
    cfg = load_config(SegmentConfig, None, ["model=efficientformerv2_s0", "output_norm=true"])
    assert cfg.output_norm is True
    assert load_config(SegmentConfig, None, ["output_norm=none"]).output_norm is None


def test_backbone_with_fpn_five_levels():
    m = BackboneWithFPN(EfficientFormerBackbone("efficientformerv2_s0", img_size=64), 32, extra_pool=True).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 64, 96))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape) for v in out.values()] == [
        (1, 32, 16, 24),
        (1, 32, 8, 12),
        (1, 32, 4, 6),
        (1, 32, 2, 3),
        (1, 32, 1, 2),
    ]


# -- data ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    pytest.importorskip("pycocotools")
    from efficientformer.dense.synthetic import make_coco

    return make_coco(tmp_path_factory.mktemp("coco"), train=4, val=3, size=96, seed=1)


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    from efficientformer.dense.synthetic import make_ade

    return make_ade(tmp_path_factory.mktemp("ade"), train=4, val=3, size=96, seed=1)


def test_coco_dataset_loading_masks_exact(coco_root):
    from efficientformer.dense.detection import CocoInstances, coco_paths

    images, ann = coco_paths(coco_root, "train")
    ds = CocoInstances(images, ann, train=False)
    assert len(ds) == 4 and ds.class_names == ["disc", "square", "triangle"]
    doc = json.loads(ann.read_text())
    kinds = {type(a["segmentation"]).__name__ for a in doc["annotations"]}
    assert kinds <= {"list", "dict"}
    for i in range(len(ds)):
        img, t = ds[i]
        assert img.shape[0] == 3 and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
        assert t["masks"].shape[1:] == img.shape[1:] and len(t["boxes"]) == len(t["labels"]) == len(t["masks"])
        for box, mask in zip(t["boxes"], t["masks"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert torch.allclose(box, torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
    # flipping moves boxes consistently with masks
    flip = CocoInstances(images, ann, train=True, flip_prob=1.0)
    img_f, t_f = flip[0]
    img_o, t_o = ds[0]
    assert torch.equal(img_f, img_o.flip(-1)) and torch.equal(t_f["masks"], t_o["masks"].flip(-1))
    w = img_o.shape[-1]
    assert torch.allclose(t_f["boxes"][:, 0], w - t_o["boxes"][:, 2])


def test_coco_missing_split_message(tmp_path):
    from efficientformer.dense.detection import coco_paths

    with pytest.raises(FileNotFoundError, match="instances_val.json"):
        coco_paths(tmp_path, "val")
    with pytest.raises(ValueError, match="--data"):
        coco_paths("", "val")


def test_ade_dataset_reduce_zero_label_and_augment(ade_root):
    from efficientformer.dense.segmentation import ADESegmentation, SegmentConfig, reduce_zero

    assert reduce_zero(np.array([0, 1, 2, 150, 255], np.uint8)).tolist() == [255, 0, 1, 149, 255]
    cfg = SegmentConfig(num_classes=4, crop_size=64, scale=(256, 64))
    val = ADESegmentation(ade_root, "validation", cfg)
    img, label = val[0]
    raw = np.asarray(Image.open(val.pairs[0][1]))
    assert img.shape[1:] == label.shape == raw.shape
    assert set(np.unique(label.numpy())) <= {0, 1, 2, 3, 255}
    assert ((raw == 0) == (label.numpy() == 255)).all()
    train = ADESegmentation(ade_root, "training", cfg, train=True)
    torch.manual_seed(0)
    for i in range(len(train)):
        img, label = train[i]
        assert img.shape == (3, 64, 64) and label.shape == (64, 64)
    with pytest.raises(FileNotFoundError, match="annotations/nope"):
        ADESegmentation(ade_root, "nope", cfg)


def _bad_coco(root, tmp_path):
    """A copy of the synthetic val split with one of each annotation problem the issue lists."""
    import shutil

    src_images, src_ann = root / "images" / "val", root / "annotations" / "instances_val.json"
    dst = tmp_path / "bad"
    shutil.copytree(src_images, dst / "images" / "val")
    doc = json.loads(src_ann.read_text())
    first = doc["images"][0]
    (dst / "images" / "val" / first["file_name"]).write_bytes(b"\x89PNG\r\n\x1a\n corrupt")  # corrupt image
    doc["images"].append({"id": 999, "file_name": "listed_but_missing.png", "height": 96, "width": 96})
    anns = doc["annotations"]
    kept = next(a for a in anns if a["image_id"] != first["id"])
    anns.append({**kept, "id": 9001})
    del anns[-1]["bbox"]  # annotation without bbox
    anns.append({**kept, "id": 9002, "segmentation": [[1, 2, 3, 4]]})  # degenerate polygon
    anns.append({**kept, "id": 9003, "category_id": 77})  # unknown category
    (dst / "annotations").mkdir()
    (dst / "annotations" / "instances_val.json").write_text(json.dumps(doc))
    return dst, doc


def test_coco_whole_file_is_checked_up_front_and_every_problem_named(coco_root, tmp_path):
    from efficientformer.data.images import SkippedImageWarning
    from efficientformer.dense.detection import CocoInstances, coco_paths

    root, doc = _bad_coco(coco_root, tmp_path)
    images, ann = coco_paths(root, "val")
    with pytest.warns(SkippedImageWarning) as record:
        ds = CocoInstances(images, ann, train=True)
    problems = ds.problems
    assert len(problems) == 5 and all(str(ann) in p for p in problems)
    text = " | ".join(problems)
    n_ann = len(doc["annotations"])
    assert "images[0]" in text and "corrupt" in text
    assert f"images[{len(doc['images']) - 1}] (id 999, listed_but_missing.png): no such file" in text
    assert f"annotations[{n_ann - 3}] (id 9001" in text and "no 'bbox'" in text
    assert f"annotations[{n_ann - 2}] (id 9002" in text and "polygon 0 has 4 coordinates" in text
    assert f"annotations[{n_ann - 1}] (id 9003" in text and "unknown category_id 77" in text
    assert "5 problem(s)" in str(record[0].message)
    assert len(ds) == len(doc["images"]) - 2
    for i in range(len(ds)):  # every remaining sample loads: nothing is left to fail inside the training loop
        _, target = ds[i]
        assert len(target["boxes"]) == len(target["masks"])
    assert {a["id"] for a in ds.coco_json["annotations"]}.isdisjoint({9001, 9002, 9003})


def test_coco_image_corrupt_after_the_check_is_skipped_in_training(coco_root, tmp_path):
    import shutil

    from efficientformer.data.images import ImageLoadError, SkippedImageWarning
    from efficientformer.dense.detection import CocoInstances, coco_paths

    dst = tmp_path / "c"
    shutil.copytree(coco_root, dst)
    images, ann = coco_paths(dst, "val")
    ds = CocoInstances(images, ann, train=True)
    first = images / ds.images[0]["file_name"]
    Image.new("RGB", (3, 400)).save(first)  # readable header, refused by the reader (aspect ratio)
    with pytest.warns(SkippedImageWarning, match=first.name):
        _, target = ds[0]
    assert int(target["image_id"]) == ds.images[1]["id"] and ds.skipped == 1
    ds.train = False  # evaluation must score every listed image: a failure there is an error naming the file
    with pytest.raises(ImageLoadError, match=first.name):
        ds[0]


def test_ade_problems_named_up_front(ade_root, tmp_path):
    import shutil

    from efficientformer.data.images import SkippedImageWarning
    from efficientformer.dense.segmentation import ADESegmentation, SegmentConfig

    root = tmp_path / "ade"
    shutil.copytree(ade_root, root)
    imgs = sorted((root / "images" / "training").iterdir())
    (root / "annotations" / "training" / (imgs[0].stem + ".png")).unlink()  # image without a label file
    imgs[1].write_bytes(b"garbage")  # corrupt image
    cfg = SegmentConfig(num_classes=4, crop_size=64, scale=(256, 64))
    with pytest.warns(SkippedImageWarning) as record:
        ds = ADESegmentation(root, "training", cfg, train=True)
    text = str(record[0].message)
    assert f"{imgs[0]}: no label file" in text and f"{imgs[1]}: not an image file" in text
    assert len(ds) == len(imgs) - 2
    # a label value that does not fit num_classes is a configuration mistake: named up front, not in the loop
    lbl = root / "annotations" / "training" / (imgs[2].stem + ".png")
    arr = np.asarray(Image.open(lbl)).copy()
    arr[0, 0] = 9
    Image.fromarray(arr).save(lbl)
    with pytest.raises(ValueError, match=rf"{lbl.name}: label value\(s\) \[9\] do not fit num_classes=4"):
        ADESegmentation(root, "training", cfg, train=True)


def test_mask_ap_by_size_uses_mask_areas():
    """A detection whose mask is small but whose box is large belongs to the small bucket of mask AP."""
    pytest.importorskip("pycocotools")
    from efficientformer.dense.detection import coco_evaluate, predictions_to_coco

    h = w = 200
    gt_mask = np.zeros((h, w), np.uint8)
    gt_mask[10:30, 10:30] = 1  # a 20x20 object: small (area 400 < 32^2) by mask and by box
    diag = np.zeros((h, w), np.uint8)
    for i in range(150):  # a thin diagonal: mask area 300 (small), box 150x150 = 22,500 (large)
        diag[40 + i, 40 + i] = 1
        diag[40 + i, min(w - 1, 41 + i)] = 1
    mask_utils = pytest.importorskip("pycocotools.mask")
    rle = mask_utils.encode(np.asfortranarray(gt_mask))
    rle["counts"] = rle["counts"].decode("ascii")
    gt = {
        "images": [{"id": 1, "file_name": "x.png", "height": h, "width": w}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": rle,
                "area": 400.0,
                "bbox": [10, 10, 20, 20],
                "iscrowd": 0,
            }
        ],
    }
    out = {
        "boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0], [40.0, 40.0, 190.0, 190.0]]),
        "labels": torch.tensor([1, 1]),
        "scores": torch.tensor([0.5, 0.9]),  # the false positive ranks first
        "masks": torch.from_numpy(np.stack([gt_mask, diag]))[:, None].float(),
    }
    m = coco_evaluate(gt, predictions_to_coco(out, 1, [1]))
    # By mask area the diagonal is a small false positive ranked above the true positive: small mask AP ~0.5.
    # By box area (the old behaviour) it fell in the large bucket and small mask AP was a perfect 1.0.
    assert m["segm_APs"] == pytest.approx(0.5, abs=0.01)
    assert m["bbox_APs"] == pytest.approx(1.0)  # box AP keeps box areas (the FP box is large)


# -- evaluators ----------------------------------------------------------------------------------------------------
def test_coco_evaluator_perfect_and_wrong(coco_root):
    from efficientformer.dense.detection import CocoInstances, coco_evaluate, coco_paths, predictions_to_coco

    ds = CocoInstances(*coco_paths(coco_root, "val"))
    perfect, wrong_class = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        out = {
            "boxes": t["boxes"],
            "labels": t["labels"],
            "scores": torch.ones(len(t["labels"])),
            "masks": t["masks"][:, None].float(),
        }
        perfect += predictions_to_coco(out, int(t["image_id"]), ds.cat_ids)
        out["labels"] = t["labels"] % 3 + 1
        wrong_class += predictions_to_coco(out, int(t["image_id"]), ds.cat_ids)
    m = coco_evaluate(ds.coco_json, perfect)
    assert m["bbox_AP"] == pytest.approx(1.0) and m["segm_AP"] == pytest.approx(1.0)
    assert m["bbox_AP50"] == pytest.approx(1.0) and m["segm_AP75"] == pytest.approx(1.0)
    w = coco_evaluate(ds.coco_json, wrong_class)
    assert w["bbox_AP"] == 0.0 and w["segm_AP"] == 0.0
    assert coco_evaluate(ds.coco_json, [])["bbox_AP"] == 0.0


def test_seg_metric_hand_made():
    from efficientformer.dense.segmentation import SegMetric

    label = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    m = SegMetric(3)
    m.update(label.clamp(max=2), label)  # perfect where labelled; ignore pixels ignored
    r = m.compute()
    assert r["mIoU"] == 1.0 and r["aAcc"] == 1.0
    m = SegMetric(3)
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 0]])
    m.update(pred, label)
    r = m.compute()
    # class 0: tp 1, union 2 -> 0.5; class 1: tp 2, union 3 -> 2/3; class 2: 1.0
    assert r["mIoU"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert r["aAcc"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="num_classes"):
        m.update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7))


def test_semantic_fpn_output_size_any_input():
    from efficientformer.dense.segmentation import SegmentConfig, SemanticFPN

    cfg = SegmentConfig(model="efficientformerv2_s0", num_classes=5, crop_size=64, fpn_channels=32, head_channels=16)
    m = SemanticFPN(cfg).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 70, 90)).shape == (1, 5, 70, 90)


# -- engine --------------------------------------------------------------------------------------------------------
def test_build_config_layers_and_errors(tmp_path):
    from efficientformer.dense.detection import DetectConfig

    yml = tmp_path / "c.yaml"
    yml.write_text("epochs: 3\nanchor_sizes: [8, 16, 32, 64, 128]\nlr: 1.0e-3\n")
    cfg = load_config(DetectConfig, yml, ["lr=5e-4", "freeze_bn=true", "weight_decay=none"], model="efficientformer_l1")
    assert cfg.epochs == 3 and cfg.anchor_sizes == (8, 16, 32, 64, 128) and cfg.lr == 5e-4 and cfg.freeze_bn
    assert cfg.resolved_weight_decay() == 1e-4
    assert load_config(DetectConfig, None, ["model=efficientformerv2_s0"]).resolved_weight_decay() == 0.05
    from efficientformer.dense.segmentation import SegmentConfig

    # official Semantic FPN: poly decay to 0 for V1, to 1e-6 for V2
    assert SegmentConfig(model="efficientformer_l3").resolved_min_lr() == 0.0
    assert SegmentConfig(model="efficientformerv2_s2").resolved_min_lr() == 1e-6
    assert load_config(SegmentConfig, None, ["model=efficientformerv2_s2", "min_lr=0"]).resolved_min_lr() == 0.0
    with pytest.raises(ValueError, match="unknown config key 'epoch'"):
        load_config(DetectConfig, None, ["epoch=3"])
    with pytest.raises(ValueError, match="expects int"):
        load_config(DetectConfig, None, ["epochs=three"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(DetectConfig, None, ["epochs"])


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "dense").glob("*.yaml")))
def test_dense_yaml_configs_build(path):
    from efficientformer.dense.detection import DetectConfig
    from efficientformer.dense.segmentation import SegmentConfig

    cls = DetectConfig if "detect" in path.name else SegmentConfig
    cfg = load_config(cls, path)  # unknown keys or unreadable values raise
    assert cfg.model.startswith("efficientformer")


def test_schedules():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    s = WarmupSchedule(opt, 100, warmup_iters=10, warmup_ratio=0.0, milestones=(50, 80))
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        s.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[20] == 1.0
    assert lrs[60] == pytest.approx(0.1) and lrs[90] == pytest.approx(0.01)
    opt2 = torch.optim.AdamW([p], lr=1.0)
    poly = WarmupSchedule(opt2, 10, poly_power=1.0)
    for _ in range(5):
        poly.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5)
    again = WarmupSchedule(torch.optim.AdamW([p], lr=1.0), 10, poly_power=1.0)
    again.load_state_dict(poly.state_dict())
    assert again.optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


def test_resumable_sampler_deterministic_and_sharded():
    a = TrainSampler(10, seed=3)
    a.set_epoch(2)
    full = list(a)
    a.set_epoch(2, start=4)
    assert list(a) == full[4:]
    r0 = TrainSampler(10, rank=0, world=2, seed=3)
    r1 = TrainSampler(10, rank=1, world=2, seed=3)
    r0.set_epoch(2)
    r1.set_epoch(2)
    assert sorted(list(r0) + list(r1)) == list(range(10))


# -- CLI -----------------------------------------------------------------------------------------------------------
def _cli(argv):
    import argparse

    from efficientformer.cli import UserError
    from efficientformer.cli import dense as dense_cli

    parser = argparse.ArgumentParser(prog="efficientformer")
    dense_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return args.func(args), None
    except (UserError, ValueError, FileNotFoundError, TypeError, ImportError) as err:
        return 2, str(err)


def test_cli_errors(tmp_path, capsys):
    rc, err = _cli(["detect", "train", "--output", str(tmp_path / "o")])
    assert rc == 2 and "--data" in err
    rc, err = _cli(["segment", "train", "--data", str(tmp_path / "missing")])
    assert rc == 2 and "not found" in err or "no ADE20K split" in err
    rc, err = _cli(["segment", "train", "--data", str(tmp_path), "itres=3"])
    assert rc == 2 and "unknown config key 'itres'" in err
    rc, err = _cli(["detect", "eval", "--checkpoint", str(tmp_path / "none.pth")])
    assert rc == 2 and "checkpoint not found" in err
    rc, err = _cli(
        ["segment", "predict", "--checkpoint", str(tmp_path / "none.pth"), "--image", "x.png", "--output", "y.png"]
    )
    assert rc == 2 and "checkpoint not found" in err
    rc, _ = _cli(["detect"])
    assert rc == 2


def test_cli_help_lists_actions(capsys):
    with pytest.raises(SystemExit):
        _cli(["segment", "--help"])
    out = capsys.readouterr().out
    for action in ("train", "eval", "predict", "synth"):
        assert action in out
