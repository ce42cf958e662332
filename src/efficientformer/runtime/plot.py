"""PNG of the training curves (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..utils.io import atomic_write_bytes


def plot_curves(
    history: list[dict],
    path: str | Path,
    metrics: Sequence[str] = ("val_top1", "val_top5", "ema_top1"),
    x: str = "epoch",
) -> Path | None:
    """Three panels against ``x``: training/validation loss, the evaluation ``metrics`` present, learning rate."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax_loss, ax_metric, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    for key in ("train_loss", "val_loss"):
        points = [(h[x], h[key]) for h in history if h.get(key) is not None and x in h]
        if points:
            ax_loss.plot(*zip(*points, strict=True), label=key.replace("_", " "))
    for key in metrics:
        points = [(h[x], h[key]) for h in history if h.get(key) is not None and x in h]
        if points:
            ax_metric.plot(*zip(*points, strict=True), marker="." if len(points) < 30 else None, label=key)
    lr = [(h[x], h["lr"]) for h in history if h.get("lr") is not None and x in h]
    if lr:
        ax_lr.plot(*zip(*lr, strict=True))
    for ax, title in ((ax_loss, "loss"), (ax_metric, "evaluation"), (ax_lr, "learning rate")):
        ax.set_title(title)
        ax.set_xlabel(x)
        if ax is not ax_lr and ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return Path(path)
