"""Property-based fuzz of the job server's HTTP API, generated from its own OpenAPI schema
(schemathesis) and sent to a real `dreamsculpt serve` process (see server_harness.py).

The one property: no request, valid or not, gets a 5xx (schemathesis' `not_a_server_error`
check). Response-schema conformance and the other schemathesis checks are deliberately not
run; test_server_api.py pins the statuses and messages that matter.

Deterministic and offline: Hypothesis is derandomized and keeps no example database; each
operation gets at most MAX_EXAMPLES generated requests, plus schemathesis' fixed coverage cases
(boundary values, missing and extra fields, wrong types, unexpected methods and media types).
Job ids are drawn from the schema's pattern (ids nobody made) and from real jobs in each
finished state, so the routes also reach existing jobs and their files.

The fuzz runs once per module in the `fuzz` fixture, and each test reads its report, so any
test runs alone or in any order. The fuzzed POST /jobs requests queue real jobs; they fail
fast in the worker (no prompt the built-in prior knows, no Stable Diffusion model offline, no
reference folder). The last test cancels whatever is still unfinished, and the fixture stops
the server and checks that it and its worker process are gone.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import load_all_checks, not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.pytest.lazy import get_all_tests
from server_harness import ServerProcess, tiny_job, wait_job

pytestmark = pytest.mark.slow   # a real server process, fuzzed

#: Generated requests per operation (the coverage phase adds its own fixed cases on top).
#: Operations without parameters (GET /health, GET /jobs, POST /models/release) have fewer
#: distinct requests than this; Hypothesis stops when it has tried them all.
MAX_EXAMPLES = 50

DOWNLOADS = ("preview.png", "result.ply", "result.glb", "result.obj", "result.mtl", "texture.png", "normal.png",
             "views.png", "turntable.gif", "run.json", "input.png", "reference.png", "views.json", "novel_views.png",
             "view_{index}.png", "scene.glb", "scene.ply", "walk.mp4", "walk.gif", "cameras.json", "frames/{index}.png",
             "depth/{index}.png")
OPERATIONS = {"GET /health", "GET /jobs", "POST /jobs", "GET /jobs/{job_id}", "DELETE /jobs/{job_id}",
              "POST /jobs/{job_id}/cancel", "POST /models/release", "POST /images", "GET /models",
              "POST /models/{name}/download", "DELETE /models/{name}"} | {
    f"GET /jobs/{{job_id}}/{name}" for name in DOWNLOADS}


def _children(pid: int) -> set[int]:
    """Direct children of `pid` (Linux /proc): the server's worker process."""
    kids: set[int] = set()
    tasks = f"/proc/{pid}/task"
    for task in os.listdir(tasks) if os.path.isdir(tasks) else ():
        try:
            with open(f"{tasks}/{task}/children") as f:
                kids |= {int(k) for k in f.read().split()}
        except OSError:
            pass
    return kids


@pytest.fixture(scope="module", autouse=True)
def _hypothesis_files_in_tmp(tmp_path_factory):
    """Nothing written outside tmp: no example database (database=None below), and Hypothesis'
    own caches (unicode tables, constants it collects from local source) go to tmp, not ./.hypothesis."""
    from hypothesis import configuration

    before = configuration.storage_directory(intent_to_write=False).home_directory
    configuration.set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    configuration.set_hypothesis_home_dir(before)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("server-fuzz")).start()
    try:
        yield srv
    finally:
        children = _children(srv.process.pid)
        srv.stop()
        assert srv.process.returncode is not None, "the server did not exit"
        deadline = time.monotonic() + 15
        while any(os.path.exists(f"/proc/{pid}") for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in children if os.path.exists(f"/proc/{pid}")]
        assert not left, f"processes of the server still running after it stopped: {left}"


@pytest.fixture(scope="module")
def known_jobs(server) -> dict[str, dict[str, str]]:
    """Real jobs for the fuzzer's job ids: one done (with files), one failed and one cancelled
    for every route, and a failed and a cancelled one more that only DELETE gets (so that the
    other routes still find theirs whatever order the operations run in)."""
    with server.client() as api:
        def make(state: str) -> str:
            if state == "done":
                return api.post("/jobs", json=tiny_job()).json()["id"]
            if state == "failed":  # no built-in shape is a vase
                return api.post("/jobs", json=tiny_job(prompt="a vase")).json()["id"]
            job_id = api.post("/jobs", json=tiny_job(steps=1000)).json()["id"]
            api.post(f"/jobs/{job_id}/cancel").raise_for_status()
            return job_id

        jobs = {"read": {state: make(state) for state in ("done", "failed", "cancelled")},
                "delete": {state: make(state) for state in ("failed", "cancelled")}}
        for group in jobs.values():
            for state, job_id in group.items():
                assert wait_job(api, job_id)["status"] == state
    return jobs


@pytest.fixture(scope="module")
def api_schema(server, known_jobs):
    auth = {"Authorization": f"Bearer {server.token}"}
    config = schemathesis.Config.from_dict({
        "headers": auth,   # sent with every generated request
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    })
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=auth, config=config, timeout=30)
    readable = [known_jobs["read"][state] for state in ("done", "failed", "cancelled")]
    deletable = [known_jobs["delete"][state] for state in ("failed", "cancelled")]

    @schema.hook
    def before_generate_path_parameters(context, strategy):
        """Besides the ids the schema's pattern generates (no such job), pick real ones. Model
        names come from the pattern alone: the session's Hugging Face cache is a fresh folder
        and the hub is offline (conftest.py), so a real name removes or fetches nothing."""
        if "{name}" in context.operation.path:   # /models/{name}
            return strategy
        ids = deletable if context.operation.method.upper() == "DELETE" else readable
        real = st.fixed_dictionaries({"job_id": st.sampled_from(ids)})
        if "{index}" in context.operation.path:   # GET /jobs/{job_id}/view_{index}.png
            real = st.fixed_dictionaries({"job_id": st.sampled_from(ids), "index": st.sampled_from(["00", "63", "64"])})
        return st.one_of(strategy, real)

    return schema


@dataclass
class FuzzReport:
    """What one fuzz of every operation got."""

    #: Operation label -> what schemathesis reported (a 5xx, with the request to repeat it).
    failures: dict[str, str] = field(default_factory=dict)
    #: Operation label -> status code -> count.
    seen: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    #: 401s to requests that did carry the token (there should be none).
    refused_with_token: list[str] = field(default_factory=list)
    #: (operation, job id) of every 200 from a route that takes a job id.
    read: set[tuple[str, str]] = field(default_factory=set)


@pytest.fixture(scope="module")
def fuzz(server, api_schema, _hypothesis_files_in_tmp) -> FuzzReport:
    """Every operation fuzzed once for the module, with the 5xx check on every request. A
    fixture rather than a test, so that each test below reads what the fuzz got whichever of
    them runs, alone or in any order. The Hypothesis tests come from `get_all_tests`, what
    schemathesis' pytest plugin runs for `schema.parametrize()` (its examples, fuzzing and
    coverage phases): the same requests, but not a documented API, so a schemathesis upgrade
    may move it."""
    report = FuzzReport()
    settings = hypothesis.settings(
        max_examples=MAX_EXAMPLES, derandomize=True, database=None,
        # Every example is a round trip to a real server; DELETE of a running job waits for it
        # to stop (seconds). Hypothesis' 200 ms deadline would only measure the machine's load.
        deadline=None,
        # No health check is suppressed: none fires (drawing a POST /jobs body takes ~5 ms).
    )

    def send(case):
        if case.operation.label == "POST /models/release":
            # Release stops the worker, and answers 409 while a job runs: wait for the jobs the
            # POST /jobs fuzz queued, so that the fuzz reaches the release itself.
            server.wait_health(lambda h: h["running"] is None and h["queue"] == 0)
        response = case.call_and_validate(checks=[not_a_server_error], timeout=60)
        label, status = case.operation.label, response.status_code
        report.seen[label][status] += 1
        if status == 401 and "Authorization" in response.request.headers:
            report.refused_with_token.append(f"{case.method} {response.request.url}")
        if status == 200 and "job_id" in (case.path_parameters or {}):
            report.read.add((label, case.path_parameters["job_id"]))

    load_all_checks()
    for built in get_all_tests(schema=api_schema, test_func=send, settings=settings, given_kwargs={}):
        operation, test = built.ok()   # an invalid schema raises here: the server's own schema is wrong
        try:
            test()
        # FailureGroup (the checks that failed, with a curl line to repeat each request) is a
        # BaseExceptionGroup, not an Exception. One operation's failure does not stop the others.
        except (Exception, FailureGroup) as exc:  # noqa: BLE001
            report.failures[operation.label] = "".join(traceback.format_exception_only(exc))
    return report


def test_no_request_gets_a_server_error(fuzz):
    if fuzz.failures:
        pytest.fail("\n".join(f"{label}:\n{text}" for label, text in fuzz.failures.items()), pytrace=False)


def test_the_fuzz_reached_every_operation_with_the_token(fuzz, known_jobs):
    seen = fuzz.seen
    assert set(seen) == OPERATIONS, set(seen) ^ OPERATIONS
    # The token went with every request but schemathesis' one probe per operation that drops
    # the Authorization header on purpose.
    assert not fuzz.refused_with_token, fuzz.refused_with_token
    assert all(codes[401] <= 1 for codes in seen.values()), dict(seen)
    assert seen["POST /jobs"][201] > 0, seen["POST /jobs"]                # some bodies were valid jobs
    assert seen["POST /models/release"][200] > 0, seen["POST /models/release"]
    # Real jobs and their files were reached, and nothing but them: no id the fuzzer made up
    # (pattern-shaped or not, percent-encoded or not) read anything.
    real = {job_id for group in known_jobs.values() for job_id in group.values()}
    assert {job_id for _, job_id in fuzz.read} <= real, fuzz.read
    done = known_jobs["read"]["done"]
    for name in ("result.ply", "result.glb", "views.png", "turntable.gif", "run.json", "preview.png"):
        assert (f"GET /jobs/{{job_id}}/{name}", done) in fuzz.read, name
    for label in ("GET /jobs/{job_id}", "POST /jobs/{job_id}/cancel"):
        assert {(label, job_id) for job_id in known_jobs["read"].values()} <= fuzz.read, label


def test_nothing_the_fuzz_queued_is_left_running(fuzz, server):
    with server.client() as api:
        for job in api.get("/jobs").json()["jobs"]:
            if job["status"] in ("queued", "running", "interrupted"):
                assert api.post(f"/jobs/{job['id']}/cancel").status_code == 200
        for job in api.get("/jobs").json()["jobs"]:
            assert wait_job(api, job["id"], timeout=60)["status"] in ("done", "failed", "cancelled")
    health = server.wait_health(lambda h: h["running"] is None and h["queue"] == 0)
    assert health["running"] is None and health["queue"] == 0
