"""What a run makes, one task per kind, and the one table that maps a kind to its task.

A task is a request model (`requests.py`: what a user may ask, validated the same way by the
CLI, the job server and the add-on), a `run(request, out_dir, callbacks, models, ...)` that is
the whole run unrolled top to bottom and returns a `TaskResult` (its run.json record), and a
`total_steps(request)` the server reports progress against. `run` also takes where the run
happens (`device`, `resume`, the picture file `image` of the image kinds) and, for tests and
benchmarks that tune what no request exposes, a ready `config` used instead of the request's.

Every task's `run` here reports the model downloads its loaders need through its own
callbacks (stage "downloading", bytes in step/total; model_download.reporting), so the CLI and
the job server's worker, which both run tasks from this table, show them.

Adding a kind: a task module, a request model, and one line in `TASKS`. The job server (which
validates `JobRequest`, built from this table), its worker and the CLI look tasks up here and
never branch on the kind. Task modules import the engine (torch) inside `run`, so the server
and the CLI can look a task up and check a request without loading it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field

from ..model_download import reporting
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


def _task(request: type[BaseModel], module: ModuleType) -> Task:
    """The task of `module`: its `run`, with the downloads of its models reported through the
    run's callbacks (then stage "loading" against its `total_steps`)."""
    run = module.run

    @functools.wraps(run)
    def reported(request, out_dir, callbacks=None, *args, **kwargs) -> TaskResult:
        with reporting(callbacks, lambda: module.total_steps(request)):
            return run(request, out_dir, callbacks, *args, **kwargs)

    return Task(request, reported, module.total_steps)


#: kind -> task. The request model's `kind` literal is the key.
TASKS: dict[str, Task] = {
    "text_to_3d": _task(TextTo3DRequest, text_to_3d),
    "image_to_3d": _task(ImageTo3DRequest, image_to_3d),
    "novel_views": _task(NovelViewsRequest, novel_views),
    "scene_walk": _task(SceneWalkRequest, scene_walk),
}
KINDS: tuple[str, ...] = tuple(TASKS)

#: What POST /jobs accepts: a request of any kind, told apart by `kind`.
JobRequest = Annotated[Union[tuple(task.request for task in TASKS.values())],  # noqa: UP007 - built from the table
                       Field(discriminator="kind")]


def public_error(error: dict) -> dict:
    """A validation error of a `JobRequest` (one of pydantic's `errors()`) as users see it: where
    and what, without the union's branch name in the location (`prompt`, not
    `text_to_3d.prompt`, after the server's leading "body" if there is one), and a missing or
    unknown kind named. The job server's 422 answers and `dreamsculpt batch` both word their
    errors with it."""
    loc = list(error.get("loc", ()))
    branch = 1 if loc[:1] == ["body"] else 0
    if len(loc) > branch and loc[branch] in KINDS:
        del loc[branch]
    msg = error.get("msg", "invalid")
    if error.get("type") in ("union_tag_not_found", "union_tag_invalid"):
        given = "is missing" if error["type"] == "union_tag_not_found" else \
            f"{str(error.get('input', {}).get('kind'))[:40]!r} is unknown"
        loc, msg = [*loc, "kind"], f"{given}: say what the job makes, one of {', '.join(map(repr, KINDS))}"
    return {"loc": loc, "msg": msg, "type": error.get("type")}


def task_of(request: BaseModel) -> Task:
    """The task that runs `request` (a request model of one of the KINDS)."""
    return TASKS[request.kind]
