"""How a run reports back: progress, previews, and the question "should I stop?". The CLI
(a progress bar, Ctrl-C) and the job server's worker (messages to the server, Cancel) plug in
here. Light on purpose: no torch, so the CLI and the server can name these types freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch


@dataclass
class Progress:
    step: int           # steps done
    total: int
    loss: float         # guidance residual, smoothed
    elapsed_s: float
    eta_s: float
    stage: str = "optimising"


@dataclass
class Callbacks:
    """Hooks the CLI and the job server plug in. Each is optional."""

    on_progress: Callable[[Progress], None] | None = None
    on_preview: Callable[[int, torch.Tensor], None] | None = None  # (step, [3, S, S] image in [0, 1])
    should_cancel: Callable[[], bool] | None = None
