"""`dreamsculpt batch JOBS.jsonl --out DIR`: many jobs from a file, one request per line (the
body POST /jobs takes), run by the job server's own queue (server.dispatcher) and job store
(server.store) without a server: the same validation, the same job folders, the same resume.

    DIR/<name>/              one job folder per line, as the server's (see server/store.py),
                             named by the line's "name", else job-NNNN by its line number
    DIR/.dreamsculpt/        the batch's images (images/), log (batch.log) and lock

The whole file is checked before anything runs (or anything is created in DIR): a refused
file prints one `error:` line per bad line and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import DreamsculptError
from .requests import IMAGE_ID_PATTERN, allowed_range

#: The batch's own files inside --out (a dot-name: no job can be called that).
HIDDEN = ".dreamsculpt"
#: Bad lines listed before "... and N more".
MAX_ERRORS = 20
#: The file a summary names as a job's result, the first of these it made.
MAIN_FILES = ("result.glb", "scene.glb", "novel_views.png", "walk.mp4", "walk.gif", "result.ply")
_IMAGE_ID = re.compile(IMAGE_ID_PATTERN)
_BOUNDED = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")

HELP = """\
Run the jobs of JOBS.jsonl, one JSON request per line as POST /jobs takes it, e.g.
  {"kind": "text_to_3d", "name": "chair", "prompt": "a wooden chair", "prior": "sd", "steps": 1500}
  {"kind": "image_to_3d", "name": "mug", "image": "photos/mug.png", "prior": "zero123"}
Blank lines and lines starting with # are skipped. "image" (and a scene walk's "depth_image")
may be the path of a file, relative to JOBS.jsonl's folder. Each job gets the folder
DIR/<name>, or DIR/job-NNNN (NNNN: its line number) when it has no name. The whole file is
checked first; nothing runs if a line is refused.

Run it again with the same JOBS.jsonl and --out to go on: done jobs are skipped, interrupted
ones resume from their checkpoint, failed ones run again from the start (their line may have
been fixed meanwhile), new lines are queued. A done or unfinished job whose line changed is
refused: remove its folder, or use another --out. Ctrl-C stops cleanly (the running job keeps
a checkpoint). Exit code: 0 when every job is done, 1 when one failed, 130 when stopped."""


class BatchRefused(DreamsculptError):
    """The file (or --out) does not hold a batch that can run; one message per problem."""

    def __init__(self, problems: list[str]):
        super().__init__(problems[0] if problems else "refused")
        self.problems = problems


@dataclass
class Line:
    number: int       # in the file, from 1 (blank and comment lines counted)
    folder: str       # the job's name: its folder in --out
    request: object   # a validated JobRequest, its images replaced by their ids
    earlier: str = "new"   # what --out holds already: new, done, unfinished, retry


def add_batch(sub) -> None:
    batch = sub.add_parser("batch", help="run many jobs from a JSON-lines file, one folder each",
                           description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch.add_argument("jobs", type=Path, metavar="JOBS.jsonl", help="one job request (JSON) per line")
    batch.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the jobs' folders go")
    where = batch.add_mutually_exclusive_group()
    where.add_argument("--devices", metavar="LIST",
                       help="one worker per device, jobs on whichever is free: e.g. cuda:0,cuda:1 or cpu "
                            "(default auto)")
    where.add_argument("--ray", metavar="ADDRESS", help="run the jobs on this Ray cluster (e.g. 10.0.0.5:6379)")
    batch.add_argument("--quiet", action="store_true", help="no progress bar (the summary is still printed)")


# --- reading and checking the file ----------------------------------------------------------------
def read_batch(path: Path, out: Path) -> tuple[list[Line], dict[str, bytes]]:
    """The file's jobs and the images they name (id -> PNG), or BatchRefused listing every bad
    line. Reads --out (to compare with an earlier run) but writes nothing."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DreamsculptError(f"{path} does not exist. Pass a file with one job request (JSON) per line.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DreamsculptError(f"Cannot read {path}: {getattr(exc, 'strerror', None) or exc}.") from None
    lines, images, problems = [], {}, {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            lines.append(Line(number, "", _request(raw, path.parent, out, images)))
        except DreamsculptError as exc:
            problems[number] = f"{path} line {number}: {exc}"
    if not lines and not problems:
        raise DreamsculptError(f"{path} holds no jobs: write one job request (JSON) per line.")
    _name_folders(lines, path, problems)
    for line in lines:
        if line.number not in problems:
            problem = _compare_with_earlier(line, out)
            if problem:
                problems[line.number] = f"{path} line {line.number}: {problem}"
    listed = [problems[n] for n in sorted(problems)] + _orphans(lines, path, out)
    if listed:
        raise BatchRefused(listed)
    return lines, images


def _request(raw: str, folder: Path, out: Path, images: dict[str, bytes]):
    """One line as a validated JobRequest; a DreamsculptError names the field."""
    from pydantic import TypeAdapter, ValidationError

    from .tasks import TASKS, JobRequest, public_error

    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DreamsculptError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise DreamsculptError("must be a JSON object: one job request, as POST /jobs takes it")
    task = TASKS.get(data.get("kind")) if isinstance(data.get("kind"), str) else None
    for field in ("image", "depth_image"):
        if task is not None and field in task.request.model_fields and isinstance(data.get(field), str):
            data[field] = _image_id(data[field], field, folder, out, images)
    try:
        return TypeAdapter(JobRequest).validate_python(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise DreamsculptError(_problem(error, public_error(error), task)) from None


def _problem(error: dict, public: dict, task) -> str:
    """One pydantic error as `field: what (got value)`, the field's whole range when it has one."""
    where = ".".join(map(str, public["loc"]))
    message = public["msg"].removeprefix("Value error, ")
    value = error.get("input")
    limits = allowed_range(task.request, tuple(public["loc"])) if task and error["type"] in _BOUNDED else None
    if limits:
        message = f"must be {limits}"
    shown = isinstance(value, (int, float, str)) and not isinstance(value, bool) and error["type"] != "value_error"
    got = f" (got {str(value)[:60]})" if shown else ""
    return f"{where}: {message}{got}" if where else f"{message}{got}"


def _image_id(value: str, field: str, folder: Path, out: Path, images: dict[str, bytes]) -> str:
    """An image file (relative to the batch file's folder) decoded as the server's upload is,
    kept in `images`; its id. An id is taken as it is if the batch already holds that image."""
    from .server.uploads import decode_depth, decode_image

    path = Path(value).expanduser()
    path = path if path.is_absolute() else folder / path
    if _IMAGE_ID.match(value) and not path.exists():
        if not (out / HIDDEN / "images" / f"{value}.png").is_file():
            raise DreamsculptError(f"{field}: no image {value[:12]}... in this batch: give the path of an image "
                                   "file instead")
        return value
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DreamsculptError(f"{field}: {value} does not exist (looked for {path.absolute()})") from None
    except OSError as exc:
        raise DreamsculptError(f"{field}: cannot read {path}: {exc.strerror}") from None
    try:
        decoded = (decode_depth if field == "depth_image" else decode_image)(data, value)
    except DreamsculptError as exc:
        raise DreamsculptError(f"{field}: {exc}") from None
    images[decoded.sha256] = decoded.png
    return decoded.sha256


def _name_folders(lines: list[Line], path: Path, problems: dict[int, str]) -> None:
    """Each line's folder: its name, or job-NNNN. Two lines with one folder (names compared
    without case: macOS and Windows would merge them) are refused, both named."""
    first: dict[str, Line] = {}
    for line in lines:
        line.folder = line.request.name or f"job-{line.number:04d}"
        other = first.setdefault(line.folder.lower(), line)
        if other is not line:
            problems[line.number] = (f"{path} line {line.number}: name: {line.folder!r} is already the folder of "
                                     f"line {other.number}: give each job its own name")


def _compare_with_earlier(line: Line, out: Path) -> str | None:
    """Sets what an earlier run left in the line's folder; a problem if it cannot go on from it."""
    from .server.schemas import JobState, JobStatus

    folder = out / line.folder
    if not folder.exists():
        return None
    try:
        job = JobStatus.model_validate_json((folder / "status.json").read_bytes())
    except (OSError, ValueError):
        return (f"{folder} exists but holds no job this batch can read (status.json): remove that folder, "
                "or use another --out")
    if job.status in (JobState.failed, JobState.cancelled):
        line.earlier = "retry"      # run again from the start, as the line says now
        return None
    if job.request.model_dump(mode="json") != line.request.model_dump(mode="json"):
        return (f"the request differs from the one {folder} was made with (its request.json): remove that "
                "folder to run the line anew, or use another --out")
    line.earlier = "done" if job.status is JobState.done else "unfinished"
    return None


def _orphans(lines: list[Line], path: Path, out: Path) -> list[str]:
    """Unfinished jobs in --out that the file no longer lists: the queue would run them."""
    from .server.schemas import JobStatus

    if not out.is_dir():
        return []
    listed, found = {line.folder for line in lines}, []
    for folder in sorted(out.iterdir()):
        if folder.name in listed or folder.name.startswith(".") or not (folder / "status.json").is_file():
            continue
        try:
            job = JobStatus.model_validate_json((folder / "status.json").read_bytes())
        except (OSError, ValueError):
            continue
        if not job.status.finished:
            found.append(f"{folder} is an unfinished job that {path} no longer lists: put its line back, or "
                         "remove that folder")
    return found


# --- running ----------------------------------------------------------------------------------------
def run_batch(args: argparse.Namespace) -> int:
    from .server.settings import ServerSettings, parse_devices

    devices = parse_devices(args.devices) if args.devices else ("auto",)
    settings = ServerSettings(data_dir=args.out / HIDDEN, device=devices[0], devices=devices,
                              executor="ray" if args.ray else "local", ray_address=args.ray)
    try:
        lines, images = read_batch(args.jobs, args.out)
    except BatchRefused as refused:
        for problem in refused.problems[:MAX_ERRORS]:
            print(f"error: {problem}", file=sys.stderr)
        if len(refused.problems) > MAX_ERRORS:
            print(f"error: ... and {len(refused.problems) - MAX_ERRORS} more", file=sys.stderr)
        return 1
    if all(line.earlier == "done" for line in lines):   # nothing to run: no worker to start
        from .server.schemas import JobStatus

        jobs = {line.folder: JobStatus.model_validate_json((args.out / line.folder / "status.json").read_bytes())
                for line in lines}
        print(summary(lines, jobs, args.out))
        return 0
    return _run(args, settings, lines, images)


def _run(args: argparse.Namespace, settings, lines: list[Line], images: dict[str, bytes]) -> int:
    from filelock import FileLock, Timeout

    from .server.dispatcher import Dispatcher
    from .server.store import JobStore

    hidden = args.out / HIDDEN
    try:
        hidden.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DreamsculptError(f"Cannot create {hidden}: {exc.strerror}. Pass a writable --out.") from None
    lock = FileLock(hidden / "batch.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DreamsculptError(f"Another `dreamsculpt batch` is running on {args.out}. Wait for it to end, "
                               "or pass another --out.") from None
    stop = threading.Event()
    previous = _catch_stop_signals(stop)
    restore_logging = _log_to(hidden / "batch.log")
    dispatcher = None
    try:
        store = JobStore(hidden, jobs_folder=args.out)
        for image_id, png in images.items():
            store.images.add(image_id, png)
        store.load()
        for line in lines:
            if line.earlier == "retry":
                store.delete(line.folder)
        dispatcher = Dispatcher(store, settings)
        dispatcher.start()   # queues what an earlier run left unfinished
        for line in lines:
            if line.earlier in ("new", "retry") and not stop.is_set():
                dispatcher.submit(line.request, job_id=line.folder)
        finished = _follow(dispatcher, lines, stop, args.quiet)
    finally:
        if dispatcher is not None:
            dispatcher.stop()   # the running job (after a stop) keeps a checkpoint, marked interrupted
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        restore_logging()
        lock.release()
    jobs = {line.folder: dispatcher.status(line.folder) for line in lines}
    print(summary(lines, jobs, args.out))
    if not finished:
        return 130
    return 0 if all(job is not None and job.status.value == "done" for job in jobs.values()) else 1


def _catch_stop_signals(stop: threading.Event) -> dict:
    """Ctrl-C and SIGTERM ask for a clean stop; a second Ctrl-C stops at once."""
    def on_signal(signum, frame):
        stop.set()
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}


def _log_to(path: Path):
    """The queue's log lines go to `path` only (stderr has the progress bar); returns the undo."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    saved = []
    for name in ("dreamsculpt.server", "dreamsculpt.server.detail"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate, logger.level))
        logger.handlers[:], logger.propagate = [handler], False
        logger.setLevel(logging.INFO)

    def restore() -> None:
        for logger, handlers, propagate, level in saved:
            logger.handlers[:], logger.propagate = handlers, propagate
            logger.setLevel(level)
        handler.close()

    return restore


def _follow(dispatcher, lines: list[Line], stop: threading.Event, quiet: bool) -> bool:
    """A progress bar over the jobs until all have ended (True) or a stop was asked (False)."""
    from tqdm import tqdm

    names = {line.folder for line in lines}
    with tqdm(total=len(lines), unit="job", disable=quiet, dynamic_ncols=True) as bar:
        while True:
            jobs = [job for job in dispatcher.jobs() if job.id in names]
            ended = sum(1 for job in jobs if job.status.finished)
            running = [f"{job.id} {job.step}/{job.total}" for job in jobs if job.status.value == "running"]
            bar.n = ended
            bar.set_postfix_str(", ".join(running)[:120], refresh=False)
            bar.refresh()
            if ended == len(names):
                return True
            if stop.wait(0.25):
                return False


def summary(lines: list[Line], jobs: dict, out: Path) -> str:
    """The table printed at the end: name, kind, status, seconds, main output file; then the
    reasons of failures too long for the table, and the counts."""
    rows, notes, counts = [("name", "kind", "status", "seconds", "output")], [], {}
    for line in lines:
        job = jobs.get(line.folder)
        state = job.status.value if job is not None else "not started"
        counts[state] = counts.get(state, 0) + 1
        status = "done (earlier run)" if state == "done" and line.earlier == "done" else state
        if job is not None and job.error:
            status = f"{state}: {job.error}" if len(job.error) <= 60 else f"{state}: {job.error[:57]}..."
            if len(job.error) > 60:
                notes.append(f"{line.folder}: {job.error}")
        seconds = job.result.seconds if job is not None and job.result else job.elapsed_s if job else None
        files = job.result.files if job is not None and job.result else []
        main = next((name for name in MAIN_FILES if name in files), files[0] if files else None)
        rows.append((line.folder, line.request.kind, status, f"{seconds:.1f}" if seconds is not None else "-",
                     _output_path(out, line.folder, main)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    table = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}"
             for r in rows]
    total = ", ".join(f"{n} {state}" for state, n in counts.items())
    return "\n".join([*table, *notes, f"{len(lines)} job(s): {total}."])


def _output_path(out: Path, folder: str, download: str | None) -> str:
    from .server.store import DOWNLOADS

    return str(out / folder / DOWNLOADS[download]) if download else "-"
