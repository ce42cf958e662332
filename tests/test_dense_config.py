"""Dense configs go through the same param() checks as the classification config: a nonsense value in every key
is refused in one line naming the key; unknown keys get a "did you mean"; the shared vocabulary (clip_grad,
freeze_bn, steps) replaces the old spellings, which still load with a one-line note."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from efficientformer.dense.detection import DetectConfig
from efficientformer.dense.segmentation import SegmentConfig
from efficientformer.runtime.config import from_dict, load_config
from efficientformer.train.config import TrainConfig

# Checked when the run starts (a path must exist then, not when a saved config is read back for `eval`)
PATHS = {"data", "pretrained"}


def nonsense(name: str, typ) -> str:
    if name in ("train_split", "val_split", "output"):
        return ""
    if name == "model":
        return "resnet50"
    if name == "device":
        return "gpu0"
    if name == "stop_signals":
        return "SIGTERM,SIGNOPE"
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    base = args[0] if args and typing.get_origin(typ) is not tuple else typ
    if base is bool:
        return "maybe"
    if typing.get_origin(base) is tuple:
        return "-3,-1"
    return "-7"  # every number in these configs has a lower bound above -7 (frozen_stages: -1)


@pytest.mark.parametrize("cls", [DetectConfig, SegmentConfig])
def test_a_nonsense_value_in_every_key_is_refused_in_one_line(cls):
    hints = typing.get_type_hints(cls)
    checked = 0
    for f in dataclasses.fields(cls):
        if f.name in PATHS:
            continue
        value = nonsense(f.name, hints[f.name])
        with pytest.raises(ValueError) as refused:
            load_config(cls, None, [f"{f.name}={value}"])
        message = str(refused.value)
        assert "\n" not in message and f.name in message, (f.name, message)
        checked += 1
    assert checked == len(dataclasses.fields(cls)) - len(PATHS)


def test_unknown_keys_did_you_mean_and_the_shared_vocabulary(capsys):
    with pytest.raises(ValueError, match="did you mean clip_grad"):
        load_config(DetectConfig, None, ["clip_grd=1"])
    for key in ("clip_grad", "freeze_bn"):  # one name across tasks
        assert all(key in {f.name for f in dataclasses.fields(c)} for c in (DetectConfig, SegmentConfig, TrainConfig))
    assert all("steps" in {f.name for f in dataclasses.fields(c)} for c in (DetectConfig, SegmentConfig))
    old = load_config(SegmentConfig, None, ["iters=7", "grad_clip=2", "frozen_bn=true"])
    assert (old.steps, old.clip_grad, old.freeze_bn) == (7, 2.0, True)
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 3 and "'iters'" in notes[0] and "use 'steps'" in notes[0]
    assert load_config(DetectConfig, None, ["max_iters=5"]).steps == 5
    assert "use 'steps'" in capsys.readouterr().err
    # a checkpoint's saved config with the old names reads back silently
    saved = {**dataclasses.asdict(SegmentConfig()), "iters": 9, "frozen_bn": True}
    del saved["steps"], saved["freeze_bn"]
    back = from_dict(SegmentConfig, saved)
    assert back.steps == 9 and back.freeze_bn and capsys.readouterr().err == ""


def test_flip_and_warmup_keys_renamed_to_the_classification_vocabulary(capsys):
    for cls in (DetectConfig, SegmentConfig):
        names = {f.name for f in dataclasses.fields(cls)}
        assert {"hflip", "warmup_steps"} <= names and not {"flip_prob", "warmup_iters"} & names
        old = load_config(cls, None, ["flip_prob=0.25", "warmup_iters=3"])
        assert (old.hflip, old.warmup_steps) == (0.25, 3)
        notes = capsys.readouterr().err.strip().splitlines()
        assert len(notes) == 2 and "use 'hflip'" in notes[0] and "use 'warmup_steps'" in notes[1], notes
        saved = {**dataclasses.asdict(cls()), "flip_prob": 0.0, "warmup_iters": 4}
        del saved["hflip"], saved["warmup_steps"]
        back = from_dict(cls, saved)
        assert (back.hflip, back.warmup_steps) == (0.0, 4) and capsys.readouterr().err == ""


def test_missing_data_and_pretrained_are_one_line_when_the_run_starts(tmp_path):
    from efficientformer.dense import loops

    with pytest.raises((ValueError, OSError)) as refused:
        loops.train_segmentation(
            load_config(SegmentConfig, None, [f"data={tmp_path / 'nope'}", "device=cpu", f"output={tmp_path / 'out'}"])
        )
    assert "\n" not in str(refused.value) and "nope" in str(refused.value)
