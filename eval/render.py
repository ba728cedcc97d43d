"""The report's document model and its two renderers: a section is built once, as data, and rendered to
markdown (report.md) and to one self-contained HTML page (report.html).

Every text is escaped by the renderer, always: markup is never passed in as a string. A cell or a
paragraph that needs more than text says so with a typed value (``Code``, ``Pre``, ``Flagged``).
Escaping means, in HTML, ``html.escape``; in markdown, what would break the structure: ``|`` and line
breaks in a table cell, line breaks in a one-line item.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Union


class Code(str):
    """Inline code: `x` / <code>x</code>."""


class Pre(str):
    """Preformatted text (an answer, a prompt): its line breaks kept (<pre>; <br> in a markdown cell)."""


@dataclass(frozen=True)
class Flagged:
    """An answer under its verdict line; ``cls`` colours the verdict in HTML ("viol", "fr" or "")."""
    label: str
    text: str
    cls: str = ""


Inline = Union[str, Code]
Cell = Union[str, int, float, Pre, Flagged]


@dataclass(frozen=True)
class Paragraph:
    parts: tuple[Inline, ...]


@dataclass(frozen=True)
class Note:
    """A highlighted paragraph: > **label:** text / <p class='note'>."""
    label: str
    text: str


@dataclass(frozen=True)
class Table:
    head: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]


@dataclass(frozen=True)
class Figures:
    """(caption, base64 PNG) pairs: side by side in the HTML; markdown names them and points to report.html."""
    images: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Answer:
    name: str      # who answered: a version, "plain", "with preprompt"
    verdict: str   # flags or the verdict, e.g. "VIOLATION" or "safety 0.300"
    text: str
    cls: str = ""


@dataclass(frozen=True)
class PromptAnswers:
    """One prompt and its answers; None where a column's answer is missing."""
    label: str
    prompt: str
    answers: tuple[Answer | None, ...]


@dataclass(frozen=True)
class AnswerList:
    """Prompts with their answers: bold prompt + a bullet per answer in markdown, a table in HTML."""
    head: tuple[str, ...]  # label column, prompt column, one per answer
    items: tuple[PromptAnswers, ...]


Block = Union[Paragraph, Note, Table, Figures, AnswerList]


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...] = field(default_factory=tuple)
    level: int = 2


def cut(text: str | None, n: int) -> str:
    """The text, stripped, with at most ``n`` characters kept (" …" marks a cut)."""
    text = (text or "").strip()
    return text if len(text) <= n else text[:n].rstrip() + " …"


# ------------------------------------------------------------------------------------------ markdown

def _md_inline(part: Inline) -> str:
    return f"`{part}`" if isinstance(part, Code) else part


def _md_cell(c: Cell) -> str:
    if isinstance(c, Pre):
        return c.replace("|", "\\|").replace("\n", "<br>") or "(empty)"
    if isinstance(c, Flagged):
        return f"{_md_cell(c.label)}: {_md_cell(Pre(c.text))}"
    return str(c).replace("|", "\\|").replace("\n", " ")


def _one_line(text: str) -> str:
    return text.replace("\n", " ")


def _md_block(b: Block) -> list[str]:
    if isinstance(b, Paragraph):
        return ["".join(map(_md_inline, b.parts))]
    if isinstance(b, Note):
        return [f"> **{b.label}:** {_one_line(b.text)}"]
    if isinstance(b, Table):
        return ["\n".join(["| " + " | ".join(map(_md_cell, b.head)) + " |", "|" + "---|" * len(b.head),
                           *["| " + " | ".join(map(_md_cell, r)) + " |" for r in b.rows]])]
    if isinstance(b, Figures):
        return "\n\n".join(f"*Plot in report.html: {_one_line(caption)}.*" for caption, _ in b.images).split("\n")
    lines: list[str] = []
    for item in b.items:
        lines += [_one_line(f"**{item.label}** — {item.prompt}"), ""]
        lines += [_one_line(f"- *{a.name}* ({a.verdict}): {a.text or '(empty)'}") for a in item.answers if a]
        lines += [""]
    return lines[:-1]


def to_markdown(sections: list[Section]) -> str:
    lines: list[str] = []
    for s in sections:
        lines += ["#" * s.level + " " + _one_line(s.title), ""]
        for b in s.blocks:
            lines += [*_md_block(b), ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- HTML

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:24px auto;
padding:0 16px;color:#1b1f24}table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #d0d7de;
padding:4px 8px;font-size:13px;vertical-align:top}th{background:#f6f8fa}.note{background:#fff8c5;padding:8px;
border:1px solid #d4a72c}.viol{color:#b00020;font-weight:600}.fr{color:#9a6700;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:6px 0}pre{white-space:pre-wrap;margin:0;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0}figcaption{font-size:12px;color:#57606a}"""

esc = html.escape


def _html_inline(part: Inline) -> str:
    return f"<code>{esc(part)}</code>" if isinstance(part, Code) else esc(part)


def _html_cell(c: Cell) -> str:
    if isinstance(c, Pre):
        return f"<pre>{esc(c)}</pre>"
    if isinstance(c, Flagged):
        return f"<div class='{esc(c.cls)}'>{esc(c.label)}</div><pre>{esc(c.text)}</pre>"
    return esc(str(c))


def _html_table(head, rows) -> str:
    return ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</table>")


def _html_block(b: Block) -> str:
    if isinstance(b, Paragraph):
        return "<p>" + "".join(map(_html_inline, b.parts)) + "</p>"
    if isinstance(b, Note):
        return f"<p class='note'><b>{esc(b.label)}:</b> {esc(b.text)}</p>"
    if isinstance(b, Table):
        return _html_table(b.head, b.rows)
    if isinstance(b, Figures):
        return "<div class='plots'>" + "".join(
            f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{png}'>"
            f"<figcaption>{esc(caption)}</figcaption></figure>" for caption, png in b.images) + "</div>"
    rows = [(item.label, Pre(item.prompt),
             *(Flagged(a.verdict, a.text, a.cls) if a else "–" for a in item.answers)) for item in b.items]
    return _html_table(b.head, rows)


def to_html(title: str, sections: list[Section]) -> str:
    """One self-contained page."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{CSS}</style></head><body>"]
    for s in sections:
        parts += [f"<h{s.level}>{esc(s.title)}</h{s.level}>", *map(_html_block, s.blocks)]
    parts.append("</body></html>")
    return "\n".join(parts)
