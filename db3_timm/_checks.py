"""Option checks that name the bad value and what was expected (one copy, used by every component)."""
from __future__ import annotations

import math
from typing import Any, List, Optional

__all__ = ["check_int", "check_number", "check_class_names"]


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


def check_class_names(value: Any, num_classes: Optional[int]) -> Optional[List[str]]:
    """Returns ``value`` as a list of distinct, non-empty class names (``num_classes`` of them when that is known),
    or ``None`` for ``None``. Distinct because a ``datasets.ClassLabel`` maps each name back to one class.

    Raises:
        ValueError: naming what is wrong (a string instead of a list, a count, an empty or repeated name).
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"class_names must be a list of names, got {value!r}")
    names = list(value)
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"class_names must be {num_classes} names (one per class), got {len(names)}")
    bad = next((n for n in names if not isinstance(n, str) or not n.strip()), None)
    if bad is not None or not names:
        raise ValueError(f"class_names must be non-empty strings, got {bad!r}")
    seen: set = set()
    repeated = next((n for n in names if n in seen or seen.add(n)), None)
    if repeated is not None:
        raise ValueError(f"class_names must be distinct, {repeated!r} is given twice")
    return names
