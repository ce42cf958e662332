"""One reader, one preprocessing: the same odd files give the same tensors on every path.

Files: a 16-bit greyscale PNG, a float TIFF, an RGBA PNG, a JPEG with EXIF orientation 6 and a palette PNG. Paths:
training data (the folder data set), the ``eval`` command, ``predict``, ``inference_model``, ``quantize``
calibration and the detection / segmentation data sets (decoded pixels; their own resizing follows).
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import efficientformer.cli as cli
from efficientformer import create_model
from efficientformer.data.folder import TolerantImageFolder, build_datasets
from efficientformer.data.images import read_rgb
from efficientformer.data.transforms import eval_transform
from efficientformer.utils.io import atomic_torch_save

SIZE = 64
NAME = "efficientformerv2_s0"
ODD = ("grey16.png", "float.tif", "rgba.png", "exif6.jpg", "palette.png")


def _write_odd_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:72, 0:96]
    Image.fromarray(((xx * 680 + yy * 2) % 65536).astype(np.uint16)).save(folder / "grey16.png")  # mean ~32k
    Image.fromarray((xx / 95.0).astype(np.float32), mode="F").save(folder / "float.tif")  # 0..1 floats
    rgba = np.zeros((72, 96, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, (xx * 2.5).astype(np.uint8)  # red fading in from transparent
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees
    photo = np.stack([xx * 2, yy * 3, (xx + yy) % 256], -1).astype(np.uint8)
    Image.fromarray(photo).save(folder / "exif6.jpg", exif=exif, quality=95)
    Image.fromarray(photo).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "palette.png")
    return [folder / n for n in ODD]


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    for split in ("train", "val"):
        _write_odd_files(root / split / "things")
        _write_odd_files(root / split / "stuff")
    return root


@pytest.fixture(scope="module")
def reference(odd):
    """What the one reader and the one preprocessing give, per file name."""
    tf = eval_transform(SIZE)
    files = sorted((odd / "val" / "things").iterdir())
    return {p.name: (np.asarray(read_rgb(p)), tf(read_rgb(p))) for p in files}


def test_the_reader_decodes_the_odd_files_correctly(reference):
    grey16, _ = reference["grey16.png"]
    assert 100 < grey16.mean() < 160  # not 99.6% white as Pillow's plain convert("RGB") made it
    assert reference["float.tif"][0].max() >= 250  # 0..1 floats scaled, not all black
    assert reference["exif6.jpg"][0].shape == (96, 72, 3)  # rotated upright
    assert tuple(reference["rgba.png"][0][0, 0]) == (255, 255, 255)  # transparent -> white


def test_training_and_eval_data_sets(odd, reference):
    train, val = build_datasets(odd, eval_transform(SIZE), eval_transform(SIZE))
    for ds in (train, val):
        for i, (path, _) in enumerate(ds.samples):
            name = path.rsplit("/", 1)[-1]
            assert np.array_equal(np.asarray(ds.loader(path)), reference[name][0]), name
            torch.testing.assert_close(ds[i][0], reference[name][1], rtol=0, atol=0)


def test_eval_command_sees_the_same_tensors(odd, reference, tmp_path, monkeypatch):
    import efficientformer.models as models
    from efficientformer.train import evaluate
    from efficientformer.train.evaluate import evaluate_checkpoint

    seen: list[torch.Tensor] = []
    real = models.create_model

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach().cpu()))
        return model

    ckpt = tmp_path / "c.pth"
    atomic_torch_save({"model": real(NAME, num_classes=2).state_dict()}, ckpt)
    monkeypatch.setattr(evaluate, "create_model", spy)
    result = evaluate_checkpoint(NAME, ckpt, odd, img_size=SIZE, batch_size=64, workers=0, device="cpu")
    assert result["images"] == 10 and result["skipped"] == 0
    batch = torch.cat(seen)
    names = [p.rsplit("/", 1)[-1] for p, _ in TolerantImageFolder(odd / "val").samples]
    for x, name in zip(batch, names, strict=True):
        torch.testing.assert_close(x, reference[name][1], rtol=0, atol=0)


def test_predict_and_inference_model(odd, reference, monkeypatch):
    from efficientformer.inference import inference_model
    from efficientformer.inference.api import Predictor

    model = create_model(NAME).eval()
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach().cpu()))
    files = [odd / "val" / "things" / n for n in ODD]
    inference_model(model, files, img_size=SIZE, device="cpu")
    for x, path in zip(torch.cat(seen), files, strict=True):
        torch.testing.assert_close(x, reference[path.name][1], rtol=0, atol=0)
    hook.remove()

    captured: list[torch.Tensor] = []
    real = Predictor.predict_tensor

    def spy(self, batch):
        captured.append(batch.detach().cpu())
        return real(self, batch)

    monkeypatch.setattr(Predictor, "predict_tensor", spy)
    monkeypatch.setattr(cli, "COMMAND_MODULES", (cli.inference,))
    argv = ["predict", *map(str, files), "--model", NAME, "--img-size", str(SIZE), "--device", "cpu", "--json"]
    assert cli.main([*argv, "--no-progress"]) == 0
    for x, path in zip(torch.cat(captured), files, strict=True):
        torch.testing.assert_close(x, reference[path.name][1], rtol=0, atol=0)


def test_quantize_calibration(odd, reference):
    from efficientformer.deploy.quantize import load_image

    for name in ODD:
        arr = load_image(odd / "val" / "things" / name, (SIZE, SIZE))
        torch.testing.assert_close(torch.from_numpy(arr), reference[name][1], rtol=0, atol=0)


def test_dense_data_sets_decode_the_same_pixels(odd, reference, tmp_path):
    pytest.importorskip("pycocotools")
    from efficientformer.dense.detection import CocoInstances
    from efficientformer.dense.segmentation import ADESegmentation, SegmentConfig

    images = _write_odd_files(tmp_path / "coco" / "images")
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i, p in enumerate(images):
        h, w = reference[p.name][0].shape[:2]
        doc["images"].append({"id": i + 1, "file_name": p.name, "height": h, "width": w})
        square = [[2, 2, 22, 2, 22, 22, 2, 22]]
        doc["annotations"].append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "bbox": [2, 2, 20, 20],
                "segmentation": square,
                "area": 400.0,
                "iscrowd": 0,
            }
        )
    ann = tmp_path / "coco" / "instances.json"
    ann.write_text(json.dumps(doc))
    coco = CocoInstances(tmp_path / "coco" / "images", ann)
    for i, info in enumerate(coco.images):
        expected = reference[info["file_name"]][0]
        assert np.array_equal(np.asarray(coco.load_image(i)), expected), info["file_name"]
        img, _ = coco[i]
        torch.testing.assert_close(img, torch.from_numpy(expected).permute(2, 0, 1).float() / 255)

    ade = tmp_path / "ade"
    for p in _write_odd_files(ade / "images" / "validation"):
        h, w = reference[p.name][0].shape[:2]
        (ade / "annotations" / "validation").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ones((h, w), np.uint8)).save(ade / "annotations" / "validation" / f"{p.stem}.png")
    seg = ADESegmentation(ade, "validation", SegmentConfig(num_classes=2))
    for i, (img_path, _) in enumerate(seg.pairs):
        assert np.array_equal(np.asarray(seg.load(i)[0]), reference[img_path.name][0]), img_path.name
