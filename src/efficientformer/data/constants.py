"""Preprocessing constants of the published evaluation protocol (official ``main.py``)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Evaluation resizes the short side to 256 (bicubic) and centre-crops 224, i.e. crop fraction 0.875.
EVAL_RESIZE = 256
EVAL_CROP = 224
EVAL_INTERPOLATION = "bicubic"
