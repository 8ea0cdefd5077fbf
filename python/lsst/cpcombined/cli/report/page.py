"""HTML building blocks of the report: the page, tables with highlighted
cells, embedded figures (PNG data URIs) and notes.

Everything is inline (styles, images): the page is one self-contained file
without scripts or links to the network.
"""

from __future__ import annotations

__all__ = (
    "CSS",
    "PAD_INCHES",
    "Cell",
    "Finding",
    "esc",
    "figure_html",
    "findings_html",
    "fmt",
    "fmt_err",
    "legend",
    "note",
    "page",
    "png_data_uri",
    "pyplot",
    "table_html",
)

import base64
import dataclasses
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

CSS = """
:root{--pass:#2e7d32;--passbg:#dcf1dd;--fail:#b71c1c;--failbg:#f8d3d3;--warnbg:#ffeeb0;--nvbg:#e7eaed}
body{font-family:"DejaVu Sans",system-ui,sans-serif;margin:0 auto;padding:1.2em 2em 3em;max-width:1360px;
 color:#1b1b1b;font-size:15px;line-height:1.4}
h1{font-size:1.75em;margin:.2em 0 .2em} h2{font-size:1.4em;border-bottom:2px solid #c9ced6;margin-top:2em;
 padding-bottom:.15em} h3{font-size:1.12em;margin:1.4em 0 .4em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:14px}
th,td{border:1px solid #b9bec5;padding:3px 8px;text-align:right;vertical-align:top;white-space:nowrap}
th{background:#eef0f3;text-align:center;font-weight:600;white-space:normal}
td.l,th.l{text-align:left;white-space:normal} td.nw{white-space:nowrap}
td.pass{background:var(--passbg)} td.fail{background:var(--failbg);color:#7f0000;font-weight:bold}
td.warn{background:var(--warnbg);font-weight:bold} td.nv{background:var(--nvbg);color:#555}
td.truth{color:#1a4f8b}
.grid td{min-width:2.2em;height:1.5em;padding:1px 3px;font-size:12px;text-align:center}
.grid th{font-size:12px;padding:2px 3px} .grid td.pass{color:#2e7d32}
.legend{font-size:13px;margin:.3em 0 .6em} .legend span{display:inline-block;padding:0 .7em;margin-right:.8em;
 border:1px solid #8a8f96}
.verdict{padding:.7em 1.1em;border-radius:6px;font-size:1.2em;margin:.8em 0 .6em}
.verdict.ok{background:var(--passbg);border:2px solid var(--pass)}
.verdict.bad{background:var(--failbg);border:2px solid var(--fail)}
.verdict.warn{background:var(--warnbg);border:2px solid #b58900}
ul.findings{margin:.3em 0 1em} ul.findings li.bad{color:#9b0000} ul.findings li.warn{color:#7a5500}
.note{color:#5d6470;font-style:italic}
figure{margin:.6em 0 1em} figcaption{font-size:13px;color:#3c4048;max-width:1300px}
img{max-width:100%;height:auto}
nav.toc{background:#f5f6f8;border:1px solid #dde0e5;padding:.4em 1em;font-size:14px;columns:4}
nav.toc a{display:block;color:#174ea6;text-decoration:none}
details{margin:.4em 0} details>summary{cursor:pointer;font-weight:600}
pre{white-space:pre-wrap;background:#f6f7f9;border:1px solid #e1e4e8;padding:.5em .8em;font-size:13px;
 margin:.3em 0}
.scroll{overflow-x:auto} .small{font-size:13px}
"""


def esc(value: Any) -> str:
    """HTML-escaped text of a value."""
    return html.escape(str(value))


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (fixed notation for
    ordinary magnitudes), ``–`` for missing or non-finite values."""
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "–"
    if v == 0:
        return "0"
    mag = abs(v)
    if 1e-3 <= mag < 1e6:
        decimals = max(0, digits - 1 - int(math.floor(math.log10(mag))))
        return f"{v:.{decimals}f}"
    return f"{v:.{digits - 1}e}"


def fmt_err(value: Any, error: Any, digits: int = 3) -> str:
    """``value ± error`` with the value's precision set by the error (two
    significant digits of the error); small or large values share a power
    of ten: ``(-2.05 ± 0.15)e-06``."""
    try:
        v, e = float(value), float(error)
    except (TypeError, ValueError):
        return fmt(value, digits)
    if not math.isfinite(v):
        return "–"
    if not math.isfinite(e) or e <= 0:
        return fmt(v, digits)
    scale = max(abs(v), e)
    exponent = int(math.floor(math.log10(scale))) if scale > 0 else 0
    if -3 <= exponent < 6:
        decimals = max(0, 1 - int(math.floor(math.log10(e))))
        return f"{v:.{decimals}f} ± {e:.{decimals}f}"
    mv, me = v / 10**exponent, e / 10**exponent
    decimals = max(0, 1 - int(math.floor(math.log10(me))))
    return f"({mv:.{decimals}f} ± {me:.{decimals}f})e{exponent:+03d}"


@dataclasses.dataclass(frozen=True)
class Cell:
    """A table cell: text (a newline breaks the line), CSS class
    (``pass``, ``fail``, ``warn``, ``nv``, ``l`` for left-aligned...) and a
    tooltip."""

    text: str
    cls: str = ""
    title: str = ""

    def html(self, tag: str = "td") -> str:
        cls = f' class="{esc(self.cls)}"' if self.cls else ""
        title = f' title="{esc(self.title)}"' if self.title else ""
        text = esc(self.text).replace("\n", "<br>")
        return f"<{tag}{cls}{title}>{text}</{tag}>"


def table_html(
    header: Sequence[str | Cell],
    rows: Iterable[Sequence[str | Cell]],
    *,
    cls: str = "",
    raw_header: str = "",
) -> str:
    """An HTML table; plain strings are ordinary cells; ``raw_header`` is
    HTML of rows put above the header row (e.g. column groups)."""

    def cell(c: str | Cell, tag: str) -> str:
        return (c if isinstance(c, Cell) else Cell(str(c))).html(tag)

    attr = f' class="{esc(cls)}"' if cls else ""
    out = [f'<div class="scroll"><table{attr}>']
    out.append(raw_header)
    out.append("<tr>" + "".join(cell(c, "th") for c in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(cell(c, "td") for c in row) + "</tr>")
    out.append("</table></div>")
    return "".join(out)


_LEGEND_COLOURS = {
    "pass": "var(--passbg)",
    "fail": "var(--failbg)",
    "warn": "var(--warnbg)",
    "nv": "var(--nvbg)",
}


def legend(items: Mapping[str, str]) -> str:
    """A legend line: CSS class (``pass``, ``fail``, ``warn``, ``nv``) ->
    meaning."""
    spans = "".join(
        f'<span style="background:{_LEGEND_COLOURS.get(cls, "#fff")}">{esc(text)}</span>'
        for cls, text in items.items()
    )
    return f'<div class="legend">{spans}</div>'


def findings_html(items: Iterable[str], *, title: str = "", small: bool = False) -> str:
    """A list of things to look at (warnings), with an optional bold title."""
    lis = "".join(f"<li class='warn'>{esc(item)}</li>" for item in items)
    head = f"<p><b>{esc(title)}</b></p>" if title else ""
    return f"{head}<ul class='findings{' small' if small else ''}'>{lis}</ul>"


def note(text: str) -> str:
    """A muted remark."""
    return f'<p class="note">{esc(text)}</p>'


def pyplot() -> Any:
    """`matplotlib.pyplot` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Padding (inches) around the drawn content of a figure cropped to it.
PAD_INCHES = 0.08


def _tight_png(fig: Any, dpi: int, pad_inches: float = PAD_INCHES) -> bytes | None:
    """The figure drawn once at ``dpi`` and cropped to its content plus
    ``pad_inches``: what ``savefig(bbox_inches="tight")`` writes, without
    its second drawing of the figure.  `None` when the content reaches
    beyond the figure (``savefig`` then enlarges the canvas instead)."""
    import matplotlib.colors
    import matplotlib.image
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    bbox = fig.get_tightbbox(canvas.get_renderer())
    rgba = np.asarray(canvas.buffer_rgba())
    height, width = rgba.shape[:2]
    x0, y0, x1, y1 = (v * dpi for v in bbox.extents)
    if x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1:
        return None
    pad = pad_inches * dpi
    # Output pixel columns and rows (rows counted from the top) of the padded box.
    c0, c1 = math.floor(x0 - pad), math.ceil(x1 + pad)
    r0, r1 = math.floor(height - y1 - pad), math.ceil(height - y0 + pad)
    out = np.empty((r1 - r0, c1 - c0, 4), dtype=np.uint8)
    out[...] = np.asarray(matplotlib.colors.to_rgba_array(fig.get_facecolor())[0] * 255).round()
    sr0, sr1, sc0, sc1 = max(r0, 0), min(r1, height), max(c0, 0), min(c1, width)
    out[sr0 - r0 : sr1 - r0, sc0 - c0 : sc1 - c0] = rgba[sr0:sr1, sc0:sc1]
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, out, format="png", dpi=dpi)
    return buf.getvalue()


def png_data_uri(fig: Any, *, dpi: int = 100, tight: bool = True) -> tuple[str, bytes]:
    """Render a figure as PNG; return its data URI and bytes, and close it.

    With ``tight`` the image is cropped to the drawn content plus
    `PAD_INCHES` (as ``savefig(bbox_inches="tight")``), from a single
    drawing of the figure.
    """
    plt = pyplot()
    data = _tight_png(fig, dpi) if tight else None
    if data is None:
        buf = io.BytesIO()
        kwargs = {"bbox_inches": "tight", "pad_inches": PAD_INCHES} if tight else {}
        fig.savefig(buf, format="png", dpi=dpi, **kwargs)
        data = buf.getvalue()
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(data).decode(), data


def figure_html(
    fig: Any,
    alt: str,
    caption: str = "",
    *,
    dpi: int = 100,
    tight: bool = True,
    attrs: Mapping[str, Any] | None = None,
) -> str:
    """A figure as an embedded PNG with a caption."""
    uri, _ = png_data_uri(fig, dpi=dpi, tight=tight)
    extra = "".join(f' {esc(k)}="{esc(v)}"' for k, v in (attrs or {}).items())
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="{uri}"{extra}>{cap}</figure>'


@dataclasses.dataclass(frozen=True)
class Finding:
    """Something the reader must see in the summary at the top.

    Attributes
    ----------
    severity
        ``bad`` (a failure or a value that must be looked at) or ``warn``.
    text
        One line.
    anchor
        Id of the section that shows it.
    """

    severity: str
    text: str
    anchor: str = ""

    def html(self) -> str:
        link = f' (<a href="#{esc(self.anchor)}">details</a>)' if self.anchor else ""
        return f'<li class="{esc(self.severity)}">{esc(self.text)}{link}</li>'


def page(title: str, body: Iterable[str]) -> str:
    """The whole HTML document."""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width'><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>"
    )
