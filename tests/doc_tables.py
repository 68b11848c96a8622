"""The generated tables of the docs: what they must hold, and how to rewrite them.

Each table is generated from the one declaration of what it shows (the
settings in procguard.limits, the stack keys in procguard.config) and sits
in a docs page between two markers. The tests compare; ``python -m
tests.doc_tables`` (``make docs``) rewrites them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from procguard.config import reference_markdown as stack_keys_markdown
from procguard.limits import reference_markdown as settings_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs"

#: (page, marker, generator)
TABLES: list[tuple[str, str, Callable[[], str]]] = [
    ("PRODUCTION_DEPLOYMENT.md", "config-reference", stack_keys_markdown),
    ("PROCESS_LIFECYCLE_MANAGEMENT.md", "settings-reference", settings_markdown),
]


def section(text: str, marker: str) -> str:
    """What stands between ``<!-- marker -->`` and ``<!-- /marker -->`` in ``text``."""
    return text.split(f"<!-- {marker} -->\n", 1)[1].split(f"<!-- /{marker} -->", 1)[0]


def rewrite() -> list[str]:
    """Put today's tables into the docs; returns the pages changed."""
    changed = []
    for page, marker, generate in TABLES:
        path = DOCS / page
        text = path.read_text()
        old = section(text, marker)
        new = generate()
        if old != new:
            path.write_text(text.replace(f"<!-- {marker} -->\n{old}", f"<!-- {marker} -->\n{new}", 1))
            changed.append(page)
    return changed


if __name__ == "__main__":
    print("rewrote: " + (", ".join(rewrite()) or "nothing (the tables are current)"))
