"""Inference: ``inference_model``, the ``predict`` and ``info`` commands.

Images are read by :mod:`efficientformer.data.images` and preprocessed by
:class:`efficientformer.data.transforms.EvalTransform`, the same reader and preprocessing as training and evaluation.
"""

from ..data.classes import imagenet_class_names
from ..data.images import ImageLoadError, as_rgb_image, read_rgb
from ..data.transforms import EvalTransform
from .api import LoadedModel, Predictor, inference_model, load_model

#: The earlier names.
EvalPreprocess = EvalTransform
load_image = read_rgb

__all__ = [
    "EvalPreprocess",
    "EvalTransform",
    "ImageLoadError",
    "LoadedModel",
    "Predictor",
    "as_rgb_image",
    "imagenet_class_names",
    "inference_model",
    "load_image",
    "load_model",
    "read_rgb",
]
