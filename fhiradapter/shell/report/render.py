"""The report's sections as data, and their two renderings: report.md (Markdown) and report.html (one
self-contained page, figures embedded as PNG)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

# A table: its header, its rows, and the sentence shown instead when it has no rows. A cell is a text, or
# several items (each criterion a patient did not meet), shown one under the other.
Cell = str | tuple[str, ...]
Table = tuple[list[str], list[list[Cell]], str]
NONE = "none"  # how an empty cell or list reads


@dataclass(frozen=True)
class Section:
    """One section of the report: its title, paragraphs (Markdown's **bold** and `code` only), the name of its
    figure (``km``, ``swimmer``), and its tables, in that order on the page."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figure: str | None = None


def items(texts: tuple[str, ...] | list[str]) -> Cell:
    """A cell of several items (criteria each with its value and limit: ``eligibility.explain``)."""
    return tuple(texts) or NONE


def _md_text(text: str) -> str:
    """Text in a Markdown table cell: a ``|`` or a line break from the data (a Patient.gender, say) would end the
    row."""
    return " ".join(part for part in text.replace("|", "/").splitlines() if part.strip())


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, str):
        return _md_text(cell)
    return _md_text(cell[0]) if len(cell) == 1 else "<br>".join(f"• {_md_text(item)}" for item in cell)


def render_markdown(title: str, meta: str, sections: list[Section], figures: dict[str, str]) -> str:
    out = [f"# {title}", "", meta, ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for p in s.paragraphs:
            out += [p, ""]
        if s.figure in figures:
            out += [f"![{s.title}]({figures[s.figure]})", ""]
        for head, body, empty in s.tables:
            if not body:  # a table without rows says so in words
                out += [empty, ""]
                continue
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in body]
            out.append("")
    return "\n".join(out)


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}h1{font-size:1.6em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}th,td{border:1px solid #ccc;
padding:.25em .55em;text-align:left;vertical-align:top}th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%}.meta{color:#555;font-size:.9em}td:first-child,code{white-space:nowrap}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.95em}
td ul{margin:0;padding-left:1.1em}td li+li{margin-top:.2em}"""


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` (an option's name, never broken at its hyphens) as HTML."""
    parts = html.escape(text).split("**")
    text = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _cell(cell: Cell) -> str:
    """A cell of several items as a list, so that an item the column wraps is not taken for two."""
    if isinstance(cell, str):
        return html.escape(cell)
    if len(cell) == 1:
        return html.escape(cell[0])
    return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in cell) + "</ul>"


def render_html(title: str, meta: str, sections: list[Section], images: dict[str, bytes]) -> str:
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='meta'>{html.escape(meta)}</p>",
    ]
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        out += [f"<p>{_inline(p)}</p>" for p in s.paragraphs]
        if s.figure is not None and s.figure in images:
            data = base64.b64encode(images[s.figure]).decode()
            out.append(f"<img alt='{html.escape(s.title)}' src='data:image/png;base64,{data}'>")
        for head, body, empty in s.tables:
            if not body:
                out.append(f"<p>{_inline(empty)}</p>")
                continue
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead>")
            out.append(
                "<tbody>"
                + "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in body)
                + "</tbody></table>"
            )
    out.append("</body></html>")
    return "\n".join(out)
