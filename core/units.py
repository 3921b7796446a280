"""Quantities in words, the one way every table, estimate and report writes them."""
from __future__ import annotations

from typing import Optional


def format_duration(seconds: Optional[float], missing: str = "") -> str:
    """'42.0 s' (under 90 s), '12 min', '3.2 h', '4 days'; `missing` for None."""
    if seconds is None:
        return missing
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"
