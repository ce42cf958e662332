"""Training and evaluation: the official recipe with distillation on one process, torchrun DDP and Slurm."""
