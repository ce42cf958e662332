"""Image classification training and evaluation: the official recipe (timm's components) as a plan for the
runtime's loop, on one process, torchrun DDP and Slurm."""
