"""Preprocessing constants of the published evaluation protocol (official ``main.py``), kept with the other model
facts in :mod:`efficientformer.models.facts`: the short side is resized to ``int(img_size / EVAL_CROP_PCT)``
(bicubic) and ``img_size`` is centre-cropped, i.e. 256 -> 224 at the published resolution."""

from ..models.facts import EVAL_CROP, EVAL_CROP_PCT, EVAL_INTERPOLATION, IMAGENET_MEAN, IMAGENET_STD

EVAL_RESIZE = int(EVAL_CROP / EVAL_CROP_PCT)

__all__ = ["EVAL_CROP", "EVAL_CROP_PCT", "EVAL_INTERPOLATION", "EVAL_RESIZE", "IMAGENET_MEAN", "IMAGENET_STD"]
