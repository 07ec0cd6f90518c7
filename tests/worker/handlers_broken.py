"""A handler module whose import fails, for the import-error tests."""

from __future__ import annotations

raise RuntimeError("broken on purpose at import time")
