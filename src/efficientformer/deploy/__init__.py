"""Deployment: the fused inference form, exporters (ONNX, TorchScript, CoreML, ExecuTorch) and INT8."""

from .fuse import DeployedEfficientFormer, deploy, load_deployed, save_deployed

__all__ = ["DeployedEfficientFormer", "deploy", "load_deployed", "save_deployed"]
