"""The kind table and the run record: every kind is one task with one request model, and every
run.json comes from one writer."""

from __future__ import annotations

import json
import typing

import pytest
from dreamsculpt.records import (
    MeshOutputs,
    Placement,
    PriorRecord,
    RunRecord,
    TaskResult,
    ViewsOutputs,
)
from dreamsculpt.tasks import KINDS, TASKS, JobRequest, task_of
from pydantic import TypeAdapter, ValidationError

IMAGE = "ab" * 32
CAMERA = {"matrix_world": [[1, 0, 0, 0], [0, 0, -1, -3], [0, 1, 0, 1.5], [0, 0, 0, 1]], "lens": 35.0}
MINIMAL = {"text_to_3d": {"prompt": "a red cube"}, "image_to_3d": {"image": IMAGE}, "novel_views": {"image": IMAGE},
           "scene_walk": {"prompt": "a room", "camera": CAMERA, "motion": "forward"}}


def test_the_table_is_keyed_by_each_request_models_kind():
    assert KINDS == tuple(TASKS) and set(KINDS) == set(MINIMAL)
    for kind, task in TASKS.items():
        assert typing.get_args(task.request.model_fields["kind"].annotation) == (kind,)


@pytest.mark.parametrize("kind", KINDS)
def test_job_request_is_the_union_of_the_tables_requests(kind):
    request = TypeAdapter(JobRequest).validate_python({"kind": kind, **MINIMAL[kind]})
    assert type(request) is TASKS[kind].request and task_of(request) is TASKS[kind]


def test_an_unknown_kind_is_refused_naming_the_kinds():
    with pytest.raises(ValidationError) as error:
        TypeAdapter(JobRequest).validate_python({"kind": "sculpture_garden", "prompt": "a room"})
    assert all(kind in str(error.value) for kind in KINDS)


def test_total_steps_is_what_each_kind_reports_against():
    adapter = TypeAdapter(JobRequest)
    text = adapter.validate_python({"kind": "text_to_3d", "prompt": "a cube", "preset": "preview"})
    assert task_of(text).total_steps(text) == 600                        # the preset's steps
    text = adapter.validate_python({"kind": "text_to_3d", "prompt": "a cube", "steps": 42})
    assert task_of(text).total_steps(text) == 42
    image = adapter.validate_python({"kind": "image_to_3d", "image": IMAGE, "preset": "high"})
    assert task_of(image).total_steps(image) == 4000
    ring = adapter.validate_python({"kind": "novel_views", "image": IMAGE, "count": 6, "steps": 10})
    assert task_of(ring).total_steps(ring) == 5 * 10                     # the reference is not made
    given = adapter.validate_python({"kind": "novel_views", "image": IMAGE, "steps": 4,
                                     "views": [{"azimuth_deg": 30}, {"azimuth_deg": 60}, {"azimuth_deg": 90}]})
    assert task_of(given).total_steps(given) == 3 * 4


def test_one_writer_for_every_kind(tmp_path):
    """run.json from a typed record: the common keys for every kind, the kind's outputs flat
    beside them (as the job server's result), the placement where there is one."""
    common = dict(request={"kind": "x"}, seed=7, seconds=12.345, device="cpu", config={"train": {}})
    mesh = RunRecord(kind="text_to_3d", prior=PriorRecord("builtin", "builtin: red cube", None),
                     outputs=MeshOutputs(steps=60, vertices=10, faces=16, threshold=5.0, texture_size=512),
                     ms_per_step={"render": 1.5}, **common)
    views = RunRecord(kind="novel_views", prior=PriorRecord("zero123", "zero123: m (zero123)", "m"),
                      outputs=ViewsOutputs(views=4, sample_steps=3, seconds_per_view=0.5),
                      placement=Placement([[1.0, 0, 0, 0]] * 4, {"file": "reference.png"}), **common)
    for record, folder in ((mesh, tmp_path / "mesh"), (views, tmp_path / "views")):
        folder.mkdir()
        data = json.loads(record.write(folder).read_text())
        assert {"dreamsculpt_version", "kind", "request", "prior", "prior_detail", "model", "seed", "seconds",
                "device", "config"} <= set(data)
        assert data["seconds"] == 12.35 and not list(folder.glob("*.tmp"))
    mesh_json = json.loads((tmp_path / "mesh" / "run.json").read_text())
    assert (mesh_json["faces"], mesh_json["steps"], mesh_json["ms_per_step"]) == (16, 60, {"render": 1.5})
    assert "placement" not in mesh_json
    views_json = json.loads((tmp_path / "views" / "run.json").read_text())
    assert views_json["views"] == 4 and views_json["model"] == "m" and views_json["placement"][0][0] == 1.0
    result = TaskResult(tmp_path / "views", views)
    assert result.outputs() == {"views": 4, "sample_steps": 3, "seconds_per_view": 0.5}
    assert result.summary() == f"wrote 4 views to {tmp_path / 'views'}/ (novel_views.png) in 12 s"
    assert TaskResult(tmp_path / "mesh", mesh).summary() == \
        f"wrote {tmp_path / 'mesh'}/mesh.glb (10 vertices, 16 faces, 512² texture) in 12 s"
