"""What a run makes, one task per kind, and the one table that maps a kind to its task.

A task is a request model (`requests.py`: what a user may ask, validated the same way by the
CLI, the job server and the add-on), a `run(request, out_dir, callbacks, models, ...)` that is
the whole run unrolled top to bottom and returns a `TaskResult` (its run.json record), and a
`total_steps(request)` the server reports progress against. `run` also takes where the run
happens (`device`, `resume`, the picture file `image` of the image kinds) and, for tests and
benchmarks that tune what no request exposes, a ready `config` used instead of the request's.

Adding a kind: a task module, a request model, and one line in `TASKS`. The job server (which
validates `JobRequest`, built from this table), its worker and the CLI look tasks up here and
never branch on the kind. Task modules import the engine (torch) inside `run`, so the server
and the CLI can look a task up and check a request without loading it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field

from ..records import TaskResult
from ..requests import (
    ImageTo3DRequest,
    NovelViewsRequest,
    SceneWalkRequest,
    TextTo3DRequest,
)
from . import image_to_3d, novel_views, scene_walk, text_to_3d


@dataclass(frozen=True)
class Task:
    request: type[BaseModel]
    run: Callable[..., TaskResult]
    total_steps: Callable[[Any], int]


#: kind -> task. The request model's `kind` literal is the key.
TASKS: dict[str, Task] = {
    "text_to_3d": Task(TextTo3DRequest, text_to_3d.run, text_to_3d.total_steps),
    "image_to_3d": Task(ImageTo3DRequest, image_to_3d.run, image_to_3d.total_steps),
    "novel_views": Task(NovelViewsRequest, novel_views.run, novel_views.total_steps),
    "scene_walk": Task(SceneWalkRequest, scene_walk.run, scene_walk.total_steps),
}
KINDS: tuple[str, ...] = tuple(TASKS)

#: What POST /jobs accepts: a request of any kind, told apart by `kind`.
JobRequest = Annotated[Union[tuple(task.request for task in TASKS.values())],  # noqa: UP007 - built from the table
                       Field(discriminator="kind")]


def task_of(request: BaseModel) -> Task:
    """The task that runs `request` (a request model of one of the KINDS)."""
    return TASKS[request.kind]
