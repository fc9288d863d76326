"""The HTML reports (``sub-<label>.html``, ``group.html``): self-contained, they open offline.

Each step contributes a *section* (a JSON-serialisable dict: title, paragraphs, tables,
figures as data URIs, :func:`section`); :func:`render_report` assembles the sections of one
report into one HTML file with the software versions at the end.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fmrilm_bids.utils.files import atomic_write_text
from fmrilm_bids.utils.versions import software_versions

#: The parts of a subject's report, in page order: preprocessing (the participant
#: workflow), then the language outputs (``group``, or ``participant --model``), then the
#: shared decoder's readout (``participant --model``).
REPORT_PARTS = ("preproc", "language", "decoding")


def section(title: str, paragraphs: Sequence[str] = (),
            figures: Sequence[tuple[str, str]] = (),
            tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[object]]]] = (),
            ) -> dict[str, object]:
    """A report section: ``figures`` as ``[(caption, data URI), ...]``, ``tables`` as
    ``[(caption, column names, rows), ...]``. JSON-serialisable: numpy scalars in the rows
    become Python numbers."""
    return {"title": title, "paragraphs": list(paragraphs),
            "figures": [{"caption": c, "uri": u} for c, u in figures],
            "tables": [{"caption": c, "columns": list(cols),
                        "rows": [[_plain(v) for v in r] for r in rows]}
                       for c, cols, rows in tables]}


def _plain(value: object) -> object:
    """A table cell as JSON can hold it (numpy scalars -> Python numbers)."""
    return value.item() if isinstance(value, np.generic) else value


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return html.escape(str(value))


def render_report(name: str, sections: Sequence[dict[str, object]]) -> str:
    """The HTML of one report, e.g. ``name="sub-01"`` (sections in order, then software
    versions)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>fmrilm-bids: {html.escape(name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "img{max-width:100%}figure{margin:1em 0}figcaption{font-size:90%;color:#444}"
        "h2{border-bottom:1px solid #ccc}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "caption{text-align:left;color:#444}</style></head><body>",
        f"<h1>fmrilm-bids report: {html.escape(name)}</h1>",
    ]
    for item in sections:
        parts.append(f"<h2>{html.escape(str(item['title']))}</h2>")
        parts += [f"<p>{html.escape(str(p))}</p>" for p in item.get("paragraphs", [])]
        for table in item.get("tables", []):
            parts.append(f"<table><caption>{html.escape(table['caption'])}</caption><tr>"
                         + "".join(f"<th>{html.escape(c)}</th>" for c in table["columns"])
                         + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
                      for row in table["rows"]]
            parts.append("</table>")
        for fig in item.get("figures", []):
            parts.append(f'<figure><img src="{fig["uri"]}" alt="{html.escape(fig["caption"])}">'
                         f"<figcaption>{html.escape(fig['caption'])}</figcaption></figure>")
    parts.append("<h2>Software</h2><ul>")
    parts += [f"<li>{html.escape(k)} {html.escape(v)}</li>"
              for k, v in software_versions().items()]
    parts.append("</ul></body></html>")
    return "\n".join(parts)


def report_part_file(output_dir: Path, subject: str, part: str) -> Path:
    """Where one part of ``sub-<subject>.html`` keeps its sections (JSON), as fMRIPrep keeps
    reportlets: ``sub-<subject>/figures/sub-<subject>_desc-<part>_report.json``."""
    if part not in REPORT_PARTS:
        raise ValueError(f"unknown report part {part!r}; one of {', '.join(REPORT_PARTS)}")
    folder = Path(output_dir) / f"sub-{subject}" / "figures"
    return folder / f"sub-{subject}_desc-{part}_report.json"


def publish_subject_report(output_dir: Path, subject: str, part: str,
                           sections: Sequence[dict[str, object]]) -> Path:
    """Save ``part``'s sections and (re)write ``sub-<subject>.html`` from every part saved,
    so each level adds its sections without losing the others'.

    Returns
    -------
    Path
        The report.
    """
    atomic_write_text(report_part_file(output_dir, subject, part), json.dumps(list(sections)))
    pages = []
    for name in REPORT_PARTS:
        saved = report_part_file(output_dir, subject, name)
        if saved.is_file():
            pages += json.loads(saved.read_text())
    out = Path(output_dir) / f"sub-{subject}.html"
    atomic_write_text(out, render_report(f"sub-{subject}", pages))
    return out
