"""A resources factory that takes a while, to widen the window between fork and a child's own handlers."""

from __future__ import annotations

import time
from typing import Any


def build(settings: Any) -> dict[str, str]:
    time.sleep(2)
    return {"built": "slowly"}
