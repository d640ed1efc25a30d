"""Class names from a labels file: one per line, in the model's output order."""

from __future__ import annotations

from pathlib import Path


def read_labels(path: Path) -> list[str]:
    """Blank lines and surrounding whitespace are ignored."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read labels file {path}: {e}") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ValueError(f"labels file {path} has no labels")
    return labels
