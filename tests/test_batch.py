"""`dreamsculpt batch JOBS.jsonl --out DIR`: a file with bad lines is refused whole, every bad
line named by its number and field, and nothing is created; its jobs run to done with one
folder each and a summary; a batch killed mid-job and run again finishes only what was left.
Built-in prior at CI size (server_harness.tiny_job)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dreamsculpt.cli import main
from dreamsculpt.cli_batch import BatchRefused, read_batch
from dreamsculpt.server.schemas import JobState
from dreamsculpt.server.store import JobStore
from dreamsculpt.tasks import TASKS
from filelock import FileLock
from server_harness import tiny_job


def write_jobs(path: Path, *lines) -> Path:
    """One line per item: a dict as JSON, a string as it is (comments, blanks, broken JSON)."""
    path.write_text("\n".join(json.dumps(line) if isinstance(line, dict) else line for line in lines) + "\n")
    return path


def refusal(capsys, jobs: Path, out: Path) -> list[str]:
    """Run the batch, expect it refused; its error lines."""
    assert main(["batch", str(jobs), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines()


# --- refused files (fast: nothing runs) -------------------------------------------------------------
def test_one_bad_line_refuses_the_whole_file_and_creates_nothing(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", tiny_job(name="a"), tiny_job(name="b"),
                      tiny_job(name="c", steps=999_999), tiny_job(name="d"))
    out = tmp_path / "out"
    assert refusal(capsys, jobs, out) == [f"error: {jobs} line 3: steps: must be from 1 to 100000 (got 999999)"]
    assert not out.exists()

    write_jobs(jobs, tiny_job(), {"kind": "text_to_4d", "prompt": "a red cube"})
    assert refusal(capsys, jobs, out) == [
        f"error: {jobs} line 2: kind: 'text_to_4d' is unknown: say what the job makes, one of 'text_to_3d', "
        "'image_to_3d', 'novel_views', 'scene_walk'"]
    assert not out.exists()


def test_broken_json_duplicate_names_and_missing_images_are_named_by_line(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl",
                      "# a comment: skipped, but counted",
                      tiny_job(name="chair"),
                      "",
                      '{"kind": "text_to_3d", "prompt": "a red cube"',
                      tiny_job("a blue cube", name="Chair"),      # the same folder on macOS and Windows
                      {"kind": "image_to_3d", "image": "photos/mug.png", "prior": "builtin"},
                      "[1, 2]",
                      tiny_job(name="../escape"))
    lines = refusal(capsys, jobs, tmp_path / "out")
    assert lines == [
        f"error: {jobs} line 4: not valid JSON (Expecting ',' delimiter at column 46)",
        f"error: {jobs} line 5: name: 'Chair' is already the folder of line 2: give each job its own name",
        f"error: {jobs} line 6: image: photos/mug.png does not exist (looked for {tmp_path / 'photos' / 'mug.png'})",
        f"error: {jobs} line 7: must be a JSON object: one job request, as POST /jobs takes it",
        f"error: {jobs} line 8: name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$' "
        "(got ../escape)"]
    assert not (tmp_path / "out").exists()


def test_at_most_twenty_bad_lines_are_listed(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", *["{"] * 25)
    lines = refusal(capsys, jobs, tmp_path / "out")
    assert len(lines) == 21 and lines[19].startswith(f"error: {jobs} line 20: not valid JSON")
    assert lines[20] == "error: ... and 5 more"


def test_an_image_path_becomes_the_id_of_the_servers_upload(tmp_path):
    from dreamsculpt.server.uploads import decode_image
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "photos" / "mug.png")
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"kind": "image_to_3d", "image": "photos/mug.png",
                                                "prior": "builtin", "name": "mug"})
    lines, images = read_batch(jobs, tmp_path / "out")
    expected = decode_image((tmp_path / "photos" / "mug.png").read_bytes())
    assert lines[0].request.image == expected.sha256 and images == {expected.sha256: expected.png}
    assert lines[0].folder == "mug" and not (tmp_path / "out").exists()


def test_a_rerun_goes_on_from_the_folders_and_refuses_changed_lines(tmp_path):
    request = TASKS["text_to_3d"].request.model_validate(tiny_job(name="a"))
    out = tmp_path / "out"
    store = JobStore(out / ".dreamsculpt", jobs_folder=out)   # the batch's layout
    store.create(request, total=5, job_id="a")
    store.create(request.model_copy(update={"name": "gone"}), total=5, job_id="gone")
    assert (out / "a" / "request.json").is_file() and (out / ".dreamsculpt" / "images").is_dir()

    jobs = write_jobs(tmp_path / "jobs.jsonl", tiny_job(name="a"), tiny_job(name="gone"), tiny_job())
    lines, _ = read_batch(jobs, out)
    assert [(line.folder, line.earlier) for line in lines] == [("a", "unfinished"), ("gone", "unfinished"),
                                                               ("job-0003", "new")]

    write_jobs(jobs, tiny_job(name="a", steps=6), tiny_job())          # "a" changed, "gone" left out
    with pytest.raises(BatchRefused) as refused:
        read_batch(jobs, out)
    assert refused.value.problems == [
        f"{jobs} line 1: the request differs from the one {out / 'a'} was made with (its request.json): remove "
        "that folder to run the line anew, or use another --out",
        f"{out / 'gone'} is an unfinished job that {jobs} no longer lists: put its line back, or remove that folder"]

    store.finish("a", JobState.failed, "the worker died")               # failed: runs again, as it reads now
    store.finish("gone", JobState.done)
    lines, _ = read_batch(jobs, out)
    assert [(line.folder, line.earlier) for line in lines] == [("a", "retry"), ("job-0002", "new")]
    fresh = JobStore(out / ".dreamsculpt", jobs_folder=out)
    assert fresh.load() == [] and {job.id for job in fresh.all()} == {"a", "gone"}
    assert (out / ".dreamsculpt" / "images").is_dir()                   # loading removes only its own leftovers


def test_a_second_batch_on_the_same_folder_is_refused(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", tiny_job(name="a"))
    (tmp_path / "out" / ".dreamsculpt").mkdir(parents=True)
    with FileLock(tmp_path / "out" / ".dreamsculpt" / "batch.lock"):
        assert refusal(capsys, jobs, tmp_path / "out") == [
            f"error: Another `dreamsculpt batch` is running on {tmp_path / 'out'}. Wait for it to end, or pass "
            "another --out."]
    assert not (tmp_path / "out" / "a").exists()


# --- batches that run -------------------------------------------------------------------------------
@pytest.mark.slow
def test_three_jobs_run_to_done_one_folder_each(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", tiny_job("a red cube", name="cube"), "# unnamed:",
                      tiny_job("a blue sphere"), tiny_job("a green sphere", name="sphere"))
    out = tmp_path / "out"
    assert main(["batch", str(jobs), "--out", str(out), "--devices", "cpu", "--quiet"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "kind", "status", "seconds", "output"]
    for row, name in zip(table[1:4], ["cube", "job-0003", "sphere"]):
        assert row.split()[:3] == [name, "text_to_3d", "done"] and float(row.split()[3]) > 0
        assert row.split()[4] == str(out / name / "out" / "mesh.glb")
        assert (out / name / "out" / "mesh.glb").stat().st_size > 1000
        status = json.loads((out / name / "status.json").read_text())
        assert status["id"] == name and status["status"] == "done"
    assert table[4] == "3 job(s): 3 done."
    assert sorted(p.name for p in out.iterdir()) == [".dreamsculpt", "cube", "job-0003", "sphere"]

    assert main(["batch", str(jobs), "--out", str(out), "--quiet"]) == 0   # all done: nothing runs
    assert [row.split()[2:5] for row in capsys.readouterr().out.splitlines()[1:4]] == \
        [["done", "(earlier", "run)"]] * 3


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _status(out: Path, name: str) -> dict:
    try:
        return json.loads((out / name / "status.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the worker")
def test_a_killed_batch_run_again_finishes_only_what_was_left(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", tiny_job(name="first"),
                      tiny_job(name="long", steps=270),   # the engine checkpoints every 250 steps
                      tiny_job(name="last"))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dreamsculpt", "batch", str(jobs), "--out", str(out), "--devices", "cpu"]
    batch = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 400
        while _status(out, "long").get("step", 0) < 260:
            assert batch.poll() is None and time.monotonic() < deadline, batch.communicate()
            time.sleep(0.2)
        workers = _children(batch.pid)
        assert workers and _status(out, "first")["status"] == "done"
        first_status = (out / "first" / "status.json").read_bytes()
        first_mesh = (out / "first" / "out" / "mesh.glb").stat().st_mtime_ns
        batch.send_signal(signal.SIGKILL)
        batch.communicate(timeout=30)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), "the worker outlived the batch"
        assert _status(out, "long")["status"] == "running" and _status(out, "last")["status"] == "queued"
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.communicate()

    again = subprocess.run(command + ["--quiet"], capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr
    assert (out / "first" / "status.json").read_bytes() == first_status        # not run again
    assert (out / "first" / "out" / "mesh.glb").stat().st_mtime_ns == first_mesh
    long, last = _status(out, "long"), _status(out, "last")
    assert long["status"] == "done" and long["step"] == 270 and long["resumed_from"] == 250
    assert last["status"] == "done"
    rows = again.stdout.splitlines()
    assert rows[1].split()[:5] == ["first", "text_to_3d", "done", "(earlier", "run)"]
    assert rows[2].split()[:3] == ["long", "text_to_3d", "done"] and rows[3].split()[:3] == ["last", "text_to_3d", "done"]
    assert "resumed from its checkpoint at step 250" in (out / ".dreamsculpt" / "batch.log").read_text()
