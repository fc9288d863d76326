"""Model cards: the ``README.md`` that every trained model folder carries.

One renderer for all of them (the tokenizer's, the language model's, the Stage-1 bundle's
and the published model's): a title, a summary paragraph, then sections whose body is text
or a two-column table.
"""

from __future__ import annotations

from collections.abc import Mapping


def markdown_table(values: Mapping[str, object]) -> str:
    """A two-column Markdown table of ``values`` (``(none)`` when empty)."""
    rows = [f"| {key} | {value} |" for key, value in values.items()]
    return "\n".join(["| | |", "|---|---|", *rows]) if rows else "(none)"


def render_card(title: str, summary: str,
                sections: Mapping[str, str | Mapping[str, object]]) -> str:
    """The Markdown of a model card.

    Parameters
    ----------
    title : str
        The ``#`` heading.
    summary : str
        What the model is and how to load it.
    sections : mapping
        ``## heading -> body``: text, or a mapping shown as a table.

    Returns
    -------
    str
    """
    parts = [f"# {title}", summary.strip()]
    for heading, body in sections.items():
        text = body if isinstance(body, str) else markdown_table(body)
        parts.append(f"## {heading}\n{text.strip()}")
    return "\n\n".join(parts) + "\n"
