"""Inference: ``inference_model``, robust image loading, the ``predict`` and ``info`` commands."""

from .api import LoadedModel, Predictor, inference_model, load_model
from .classes import imagenet_class_names
from .images import ImageLoadError, as_rgb_image, load_image
from .preprocess import EvalPreprocess

__all__ = [
    "EvalPreprocess",
    "ImageLoadError",
    "LoadedModel",
    "Predictor",
    "as_rgb_image",
    "imagenet_class_names",
    "inference_model",
    "load_image",
    "load_model",
]
