"""Sizes written for people: one spelling of bytes for every message that states one."""

from __future__ import annotations


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest decimal unit that keeps it at least 1 (``1.5 GB``, ``812 B``)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError
