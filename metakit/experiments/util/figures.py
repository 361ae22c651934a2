"""Matplotlib set up once for files (no screen) and the finishing touches every figure shares."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 100


def save(fig, path: Path) -> None:
    """Lay out, write ``path`` as PNG and free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def finish_line_plot(fig, ax, xlabel: str, ylabel: str, path: Path, limits=None, log: bool = True) -> None:
    """Label, log-scale (within ``limits`` if given), legend and grid a line chart; save and free it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if limits is not None:
        ax.set_ylim(*limits)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, path)
