"""A page as typed blocks, written twice from Jinja2 templates: ``report.md`` and a
self-contained ``report.html`` (PNG plots embedded), so the two formats never drift apart.

The templates (``templates/page.md.j2``, ``templates/page.html.j2``) hold all markup; the
pages (:mod:`alignlab.report.pages`) say only what is on them.
"""

from __future__ import annotations

import base64
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

TEMPLATES = Path(__file__).parent / "templates"


def format_number(value: Any) -> str:
    """How numbers appear in report tables: ints as-is, floats with 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool | int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return format(value, ".4g")
    return str(value)


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2
    kind: ClassVar[str] = "heading"


@dataclass(frozen=True)
class Paragraph:
    text: str
    kind: ClassVar[str] = "paragraph"


@dataclass(frozen=True)
class Headline:
    """What the run is judged by, first on the page: a title line and detail lines."""
    text: str
    details: tuple[str, ...] = ()
    kind: ClassVar[str] = "headline"


@dataclass(frozen=True)
class Table:
    """Rows of cells (numbers are formatted by :func:`format_number`)."""
    headers: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    kind: ClassVar[str] = "table"


@dataclass(frozen=True)
class Image:
    path: Path
    alt: str
    kind: ClassVar[str] = "image"


@dataclass(frozen=True)
class Links:
    """Links to other pages: (text, path without extension) pairs."""
    items: tuple[tuple[str, str], ...]
    kind: ClassVar[str] = "links"


@dataclass(frozen=True)
class Notes:
    """Problems met while reading the files, shown instead of crashing."""
    items: tuple[str, ...]
    kind: ClassVar[str] = "notes"


Block = Heading | Paragraph | Headline | Table | Image | Links | Notes


@dataclass
class Page:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Page:
        self.blocks.extend(blocks)
        return self


def table(headers: list[str] | tuple[str, ...], rows: list[list[Any]]) -> Table:
    return Table(tuple(headers), tuple(tuple(r) for r in rows))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else format_number(value)


def _md_cell(value: Any) -> str:
    return _text(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", "") \
        .replace("\n", "<br>")


def _short(value: Any) -> bool:
    """A short one-word value (a number, a category): its HTML cell never wraps mid-word
    (browsers broke "0.03968" and "borderline" in two in narrow columns)."""
    text = _text(value)
    return len(text) <= 24 and not any(ch.isspace() for ch in text)


def _png(path: Path) -> str:
    # Embedded so the HTML file works alone (copied, attached, served anywhere).
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


@functools.cache  # one per format: a sweep renders a page per member
def _environment(html: bool) -> Any:
    import jinja2
    from markupsafe import Markup, escape

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=html,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)
    env.filters["text"] = _text
    env.filters["md_cell"] = _md_cell
    env.filters["short"] = _short
    env.filters["png"] = _png
    # HTML: newlines in a cell become line breaks, the rest escaped.
    env.filters["lines"] = lambda v: Markup("<br>").join(escape(_text(v)).split("\n"))
    return env


def render(page: Page, fmt: str) -> str:
    """The page as ``"md"`` or ``"html"`` text."""
    template = _environment(fmt == "html").get_template(f"page.{fmt}.j2")
    text = template.render(title=page.title, blocks=page.blocks)
    return text.rstrip() + "\n"


def write(root: Path, page: Page) -> Path:
    """``report.md`` and ``report.html`` of ``page`` in ``root``; the Markdown's path."""
    md_path = root / "report.md"
    md_path.write_text(render(page, "md"), encoding="utf-8")
    (root / "report.html").write_text(render(page, "html"), encoding="utf-8")
    return md_path
