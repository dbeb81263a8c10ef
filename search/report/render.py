"""The page's building blocks, written out as Markdown or as one self-contained HTML file.

The page is a list of blocks (headings, paragraphs, tables, pictures, the verdict), so
`report.md` and `report.html` are written from the same list and always say the same.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Heading:
    """A heading; the page's first is its title."""

    text: str


@dataclass(frozen=True)
class Para:
    """A paragraph."""

    text: str  # may hold **bold** and `code`


@dataclass(frozen=True)
class Table:
    """A table, one row optionally highlighted."""

    frame: pd.DataFrame  # cells already formatted as text
    highlight: int | None = None  # the row to mark (the winner)


@dataclass(frozen=True)
class Picture:
    """A PNG under OUT with its caption."""

    path: Path
    caption: str


@dataclass(frozen=True)
class Verdict:
    """The boxed summary the page opens with: a title and its points."""

    title: str
    items: list[str]


Block = Heading | Para | Table | Picture | Verdict


def _markdown_table(frame: pd.DataFrame, highlight: int | None) -> str:
    def cells(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    lines = [cells(list(frame.columns)), cells(["---"] * len(frame.columns))]
    for i, row in enumerate(frame.itertuples(index=False)):
        values = [str(v) for v in row]
        if i == highlight:
            values = [f"**{v}**" if v else v for v in values]
        lines.append(cells(values))
    return "\n".join(lines)


def to_markdown(blocks: list[Block], out: Path) -> str:
    """The page as Markdown; pictures are linked relative to OUT."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(("# " if not parts else "## ") + block.text)
        elif isinstance(block, Para):
            parts.append(block.text)
        elif isinstance(block, Verdict):
            parts.append(f"> **{block.title}**\n>\n" + "\n".join(f"> - {item}" for item in block.items))
        elif isinstance(block, Table):
            parts.append(_markdown_table(block.frame, block.highlight))
        elif isinstance(block, Picture):
            parts.append(f"![{block.path.stem}]({block.path.relative_to(out).as_posix()})\n\n*{block.caption}*")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _html_table(frame: pd.DataFrame, highlight: int | None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cells = "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
        body.append(f'<tr class="best">{cells}</tr>' if i == highlight else f"<tr>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; background: #f3f4f6;
       color: #1f2328; line-height: 1.45; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 12px; }
h2 { font-size: 20px; margin: 32px 0 8px; border-bottom: 1px solid #e5e7eb; padding-bottom: 4px; }
.verdict { border-left: 6px solid #2e7d32; background: #eef7ee; padding: 10px 20px 6px; margin: 12px 0 8px; }
.verdict h2 { border: none; margin: 4px 0; font-size: 21px; color: #1b5e20; }
.verdict li { margin: 3px 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12.5px; margin: 8px 0; }
th { background: #f6f8fa; text-align: left; position: sticky; top: 0; }
th, td { padding: 4px 7px; border-bottom: 1px solid #e5e7eb; white-space: nowrap; }
tr.best td { background: #fff4c2; font-weight: 600; }
code { background: #f3f4f6; padding: 1px 4px; border-radius: 3px; font-size: 90%; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e5e7eb; }
figcaption { color: #57606a; font-size: 13px; max-width: 900px; }
"""


def to_html(blocks: list[Block], title: str) -> str:
    """The page as one self-contained HTML file: styles inline, pictures as data URIs."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h1>{_inline(block.text)}</h1>" if not parts else f"<h2>{_inline(block.text)}</h2>")
        elif isinstance(block, Para):
            parts.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Verdict):
            items = "".join(f"<li>{_inline(i)}</li>" for i in block.items)
            parts.append(f'<section class="verdict"><h2>{_inline(block.title)}</h2><ul>{items}</ul></section>')
        elif isinstance(block, Table):
            parts.append(_html_table(block.frame, block.highlight))
        elif isinstance(block, Picture):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.path.stem)}">'
                         f"<figcaption>{_inline(block.caption)}</figcaption></figure>")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><main>\n" + "\n".join(parts) + "\n</main></body></html>\n")
