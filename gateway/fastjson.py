"""A faster JSON parser for the frames that come dozens of times a second: caller media and model
audio deltas.

orjson parses those in about a quarter of the time `json.loads` takes. It is used on the hot path
only, by functions that return None for anything but a well-formed media frame or audio delta, so
every other frame (and anything orjson refuses or reads differently, such as NaN or integers beyond
64 bits) is decoded by the standard library as before, with the same verdicts on bad input.
Without orjson installed, the standard library's parser is used here too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

loads: Callable[[str], Any]
try:
    from orjson import loads
except ImportError:  # pragma: no cover - orjson is a dependency; this keeps a source install working
    loads = json.loads
