"""Option checks that name the bad value and what was expected (one copy, used by every component)."""
from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["check_int", "check_number"]


def check_int(name: str, value: Any, minimum: int, *, at_most: Optional[int] = None) -> int:
    """Returns ``value`` as an int if it is an integer (not a bool, not ``1.5``) in ``[minimum, at_most]``.

    Raises:
        ValueError: naming the option, the value and what was expected.
    """
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value, ok = int(value), True  # JSON numbers such as 100.0
    if not ok or value < minimum or (at_most is not None and value > at_most):
        bound = f"in [{minimum}, {at_most}]" if at_most is not None else f"at least {minimum}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any, *, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """Returns ``value`` as a float if it is a finite real number within the given bounds.

    Raises:
        ValueError: naming the option, the value and the accepted range.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return float(value)
