"""What the HTML/Markdown reports share: matplotlib detection, figure -> PNG, the page style.

matplotlib is optional (`pip install 'graphopt[report]'`); without it reports are written
without plots and say so with PLOTS_MISSING.
"""

from __future__ import annotations

__all__ = ["CSS", "PLOTS_MISSING", "plots_available", "png"]

import io

PLOTS_MISSING = "plots omitted: matplotlib is not installed (pip install 'graphopt[report]')"

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;
margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{
text-align:left}th{background:#f3f3f3}.note{color:#8a6d00}img{max-width:100%}"""


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def png(fig, plt) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
