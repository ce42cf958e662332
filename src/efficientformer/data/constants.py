"""Preprocessing constants of the published evaluation protocol (official ``main.py``)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Evaluation resizes the short side to ``int(img_size / EVAL_CROP_PCT)`` (bicubic) and centre-crops ``img_size``:
#: 256 -> 224 at the published resolution, i.e. crop fraction 0.875.
EVAL_CROP_PCT = 0.875
EVAL_CROP = 224
EVAL_RESIZE = int(EVAL_CROP / EVAL_CROP_PCT)
EVAL_INTERPOLATION = "bicubic"
