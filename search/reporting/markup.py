"""HTML pieces of the report and the comparison page: one page, tables, notes, embedded PNGs.

    page("blood - medsweep report", table(["trial", "val_auc"], rows) + note("..."))

Every text a piece gets is escaped; figures are embedded as base64 data URIs, so a page opens
offline and can be mailed.
"""

from __future__ import annotations

import base64
import html
import math

from trainables.scores import is_finite

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } tr.best td { background: #eaf6ea; }
img { max-width: 100%; display: block; margin: 0.6em 0; }
.note { color: #666; font-style: italic; }
.warn { background: #fff4e0; border-left: 4px solid #e69500; padding: 0.4em 0.8em; }
.error { background: #fde8e8; border-left: 4px solid #c00; padding: 0.4em 0.8em; }
.pair { display: flex; flex-wrap: wrap; gap: 1em; } .pair > div { flex: 1 1 45%; }
.scroll { overflow-x: auto; }
"""


def page(title: str, body: str) -> str:
    """A whole HTML document: inline CSS, no external resources."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n"
        "</body></html>\n"
    )


def table(head: list[str] | None, rows: list[list], row_classes: list[str] | None = None) -> str:
    """A table of escaped cells; no header row when `head` is None."""
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head or [])
    lines = [f"<tr>{th}</tr>"] if head else []
    for i, row in enumerate(rows):
        cls = f" class='{row_classes[i]}'" if row_classes and row_classes[i] else ""
        cells = "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
        lines.append(f"<tr{cls}>{cells}</tr>")
    return f"<table>{''.join(lines)}</table>"


def img(data: bytes, alt: str) -> str:
    """PNG bytes as an <img> with a data URI."""
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'


def note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def box(kind: str, text: str) -> str:
    """A highlighted paragraph; `kind` is "warn" or "error"."""
    return f"<p class='{kind}'>{html.escape(text)}</p>"


def fmt(v) -> str:
    """A cell value: 4 significant digits for floats, "-" for missing or NaN."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def duration(seconds) -> str:
    if not is_finite(seconds):
        return "not available"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def nan_if_missing(value) -> float:
    return float(value) if is_finite(value) else math.nan
