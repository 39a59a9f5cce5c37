"""The one place progress bars are made (fit, calibration, factorization, weight-only, plan)."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


def progress_bar(total: int | None, desc: str, enabled: bool) -> Any:
    """A transient tqdm bar for long work, or None when `enabled` is false (callers update and
    close it only when it is not None)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
