"""Dense prediction with EfficientFormer backbones: Mask R-CNN detection and Semantic FPN segmentation."""

from .backbone import BackboneWithFPN, EfficientFormerBackbone, FrozenBatchNorm2d, freeze_batchnorm

__all__ = ["BackboneWithFPN", "EfficientFormerBackbone", "FrozenBatchNorm2d", "freeze_batchnorm"]
