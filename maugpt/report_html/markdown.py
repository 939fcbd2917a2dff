"""The Markdown tables of ``tables.md``/``report.md`` as HTML, and files embedded as data URIs."""

from __future__ import annotations

import base64
from pathlib import Path

from maugpt.report_html.template import MAX_EMBED_BYTES, esc


def _cells(line: str) -> list[str]:
    line = line.strip().removeprefix("|").removesuffix("|")
    return [c.strip().replace("\0", "|") for c in line.replace("\\|", "\0").split("|")] if line else []


def markdown_html(text: str) -> str:
    """HTML of the Markdown that ``tables.md`` and ``report.md`` hold: ``#`` headings, pipe tables
    (right-aligned where the separator says ``---:``) and paragraphs; all text escaped."""
    out, paragraph, lines, i = [], [], text.splitlines(), 0

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{'<br>'.join(map(esc, paragraph))}</p>")
            paragraph.clear()

    while i < len(lines):
        line = lines[i].strip()
        separator = _cells(lines[i + 1]) if i + 1 < len(lines) else []
        if line.startswith("#"):
            flush()
            level = min(len(line) - len(line.lstrip("#")), 6)
            out.append(f"<h{level}>{esc(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("|") and separator and all(set(c) <= set(":-") and "-" in c for c in separator):
            flush()
            right = [' class="r"' if c.endswith(":") else "" for c in separator]

            def row(tag: str, cells: list[str], right: list[str] = right) -> str:
                aligned = (f"<{tag}{right[j] if j < len(right) else ''}>{esc(c)}</{tag}>" for j, c in enumerate(cells))
                return "<tr>" + "".join(aligned) + "</tr>"

            rows, i = [row("th", _cells(line))], i + 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(row("td", _cells(lines[i])))
                i += 1
            out.append(f"<table>{''.join(rows)}</table>")
            continue
        elif line:
            paragraph.append(line)
        else:
            flush()
        i += 1
    flush()
    return "\n".join(out)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def embedded_files(folder: Path, names: list[str]) -> str:
    """The folder's PNG figures as images and its CSV files as download links, all embedded."""
    parts, notes = [], []
    for path in sorted(p for name in names for p in folder.glob(name) if p.is_file()):
        if path.stat().st_size > MAX_EMBED_BYTES:
            notes.append(f"{path.name} left out: larger than {MAX_EMBED_BYTES:,} bytes")
        elif path.suffix == ".png":
            parts.append(
                f'<figure><img src="{data_uri(path.read_bytes(), "image/png")}" alt="{esc(path.name)}">'
                f"<figcaption>{esc(path.name)}</figcaption></figure>"
            )
        else:
            parts.append(
                f'<a download="{esc(path.name)}" href="{data_uri(path.read_bytes(), "text/csv")}">{esc(path.name)}</a> '
            )
    return "\n".join(parts + [f'<p class="note">{esc(n)}</p>' for n in notes])
