"""Priors loaded once per process and reused across runs.

The CLI makes one run per process and needs no cache. The job server's worker keeps a
`ModelCache` alive between jobs, so the second job on the same model starts at once, and
drops it on request or after an idle time to give the memory (VRAM) back.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Callable


class ModelCache:
    """Named, loaded models. Keys are readable ("sd stabilityai/... cuda float16"), since
    they are what `GET /health` lists as loaded."""

    def __init__(self, on_load: Callable[[str, float], None] | None = None) -> None:
        self._items: dict[str, Any] = {}
        self.on_load = on_load   # told (key, seconds) after each load: the server logs it

    def get(self, key: str, load: Callable[[], Any]) -> Any:
        """The cached value for `key`, loading it with `load()` the first time."""
        if key not in self._items:
            start = time.perf_counter()
            self._items[key] = load()
            if self.on_load:
                self.on_load(key, time.perf_counter() - start)
        return self._items[key]

    def names(self) -> list[str]:
        return list(self._items)

    def clear(self) -> list[str]:
        """Forget every model and give the memory back; returns what was released."""
        released = self.names()
        self._items.clear()
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return released
