"""Matplotlib set up once for files (no screen) and the finishing touches every figure shares."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

DPI = 100


class PlainLogFormatter(ticker.LogFormatter):
    """Tick labels of a log axis as plain numbers (``0.2``, ``5``, ``64``) rather than powers of
    ten; where a label is drawn is the :class:`~matplotlib.ticker.LogFormatter`'s choice."""

    def __call__(self, x, pos=None):
        """The label of the tick at ``x`` (empty where none is drawn)."""
        return f"{x:g}" if super().__call__(x, pos) else ""


def save(fig, path: Path) -> None:
    """Lay out, write ``path`` (PNG, PDF or SVG, by its suffix) and free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plain_log_y(ax) -> None:
    """Make the y axis of ``ax`` logarithmic with plain-number tick labels, minor ticks labelled
    only where it spans less than about a decade."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PlainLogFormatter())
    ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def finish_line_plot(
    fig, ax, xlabel: str, ylabel: str, path: Path, limits=None, log: bool = True, title: str = ""
) -> None:
    """Label (whole numbers on the x axis: steps, iterations), log-scale with plain tick labels
    (within ``limits`` if given), title, legend and grid a line chart; save and free it."""
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log:
        plain_log_y(ax)
    if limits is not None:
        ax.set_ylim(*limits)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, path)
