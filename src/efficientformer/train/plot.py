"""PNG of the training curves (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict], path: str | Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    evals = [h for h in history if h.get("val_top1") is not None]
    if evals:
        ax_loss.plot([h["epoch"] for h in evals], [h["val_loss"] for h in evals], label="val loss")
        ax_acc.plot([h["epoch"] for h in evals], [h["val_top1"] for h in evals], label="top-1")
        ax_acc.plot([h["epoch"] for h in evals], [h["val_top5"] for h in evals], label="top-5", alpha=0.6)
        if any(h.get("ema_top1") is not None for h in evals):
            ax_acc.plot([h["epoch"] for h in evals], [h.get("ema_top1") for h in evals], label="EMA top-1")
    ax_lr.plot(epochs, [h["lr"] for h in history])
    for ax, title in ((ax_loss, "loss"), (ax_acc, "validation accuracy (%)"), (ax_lr, "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if ax is not ax_lr:
            ax.legend()
    fig.tight_layout()
    from ..utils.io import atomic_write_bytes

    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return Path(path)
