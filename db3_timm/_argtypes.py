"""argparse ``type`` callables shared by the ``db3`` CLI and the recipes (stdlib only, so ``--help`` stays fast)."""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict


def json_object(text: str) -> Dict[str, Any]:
    """Returns the JSON object ``text`` (a component's extra keyword arguments); names the bad value otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r} ({err.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"momentum\": 0.5}}', got {text!r}")
    return value
