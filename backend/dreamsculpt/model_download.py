"""Downloading models into the Hugging Face cache, with progress in bytes.

A download is planned from the hub's listing (`HfApi.model_info(files_metadata=True)`: names
and sizes), narrowed to the files the loader reads (`model_store.select_files`: the registry's
patterns, or for a repo it does not know every file a loader could read), then fetched file
by file with `hf_hub_download`, which resumes a partial file and skips nothing the cache lacks:
a second run fetches only what is missing. huggingface_hub hands its byte counts to the tqdm
class it is given; ours adds them to one `Transfer` over every file and repo.

Jobs: `reporting(callbacks, total_steps)` is set around every task's run (tasks/__init__.py),
so `download_for_loader` (called by guidance/hub.load_from_hub) reports through the run's own
callbacks: Progress(stage="downloading", step=bytes done, total=bytes), then stage "loading".
huggingface_hub is imported inside the functions.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from .callbacks import Callbacks, Progress
from .errors import CancelledError, DreamsculptError
from .model_store import ModelEntry, cache_dir, entry_for_repo, select_files, with_needs

#: (bytes done, bytes total) of a whole download, every file and repo together.
Report = Callable[[int, int], None]
#: Least seconds between two reports while bytes flow (each file's end is always reported).
REPORT_EVERY_S = 0.25
#: Exception class names that mean "no network" (huggingface_hub, httpx and requests each have
#: their own, so they are matched by name).
_OFFLINE_ERRORS = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError",
                   "TransportError", "TimeoutException", "Timeout", "TimeoutError"}


@dataclass(frozen=True)
class DownloadPlan:
    """One repo's files to have in the cache. `files`: path -> bytes, as the hub lists them at
    `revision` (a commit); `cached`: those the cache already holds at that commit."""

    repo: str
    revision: str | None
    files: dict[str, int]
    cached: frozenset[str]

    @property
    def total(self) -> int:
        return sum(self.files.values())

    @property
    def done(self) -> int:
        return sum(self.files[path] for path in self.cached)


@dataclass(frozen=True)
class Fetched:
    """What one download did: the plans it followed and the bytes it wrote."""

    plans: list[DownloadPlan]
    downloaded: int

    @property
    def total(self) -> int:
        return sum(plan.total for plan in self.plans)

    @property
    def fetched_files(self) -> int:
        return sum(len(plan.files) - len(plan.cached) for plan in self.plans)


def plan(repo: str, model: ModelEntry | None = None) -> DownloadPlan:
    """The hub's listing of `repo` narrowed to what the loader reads (the registry's patterns
    when `model` is given). Hub errors propagate (see `download_error`)."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    info = HfApi().model_info(repo, files_metadata=True, timeout=10)   # one try: fails fast offline
    listing = {s.rfilename: (s.size if s.size is not None else (s.lfs.size if s.lfs else 0))
               for s in info.siblings or ()}
    absent = [path for path in (model.required if model else ()) if path not in listing]
    if absent:
        raise DreamsculptError(f"The hub's {repo} has no {', '.join(absent)}, which dreamsculpt's loader reads: "
                               "the repo changed since model_store.py was written. Pass a local copy of the model "
                               "(its --model option) instead.")
    files = select_files(listing, model.files if model else None)
    cached = frozenset(path for path in files if isinstance(
        try_to_load_from_cache(repo, path, cache_dir=cache_dir(), revision=info.sha), str))
    return DownloadPlan(repo, info.sha, files, cached)


class Transfer:
    """Bytes done of one download, shared by every file's counting bar (huggingface_hub's Xet
    downloads count from their own threads); reports at most every REPORT_EVERY_S."""

    def __init__(self, total: int, done: int, report: Report | None,
                 should_stop: Callable[[], bool] | None):
        self.total, self.done = total, done
        self.report, self.should_stop = report, should_stop
        self._lock = threading.Lock()
        self._reported_at = 0.0

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
        if self.should_stop is not None and self.should_stop():
            # Raised inside huggingface_hub's write loop: the partial file stays, to resume.
            raise CancelledError("The download was stopped; it goes on from there next time.")
        self.tell(force=False)

    def finish_file(self, done: int) -> None:
        """A file is in the cache: `done` is exact now (a blob already there sent no bytes)."""
        with self._lock:
            self.done = done
        self.tell(force=True)

    def tell(self, force: bool) -> None:
        now = time.monotonic()
        if self.report is not None and (force or now - self._reported_at >= REPORT_EVERY_S):
            self._reported_at = now
            self.report(min(self.done, self.total), self.total)


def _counting_bar(transfer: Transfer) -> type:
    """A stand-in for tqdm that huggingface_hub's downloads accept (`tqdm_class`): update()
    is bytes written to the cache, added to `transfer`."""

    class CountingBar:
        def __init__(self, *args, total: int | None = None, initial: int = 0, **kwargs):
            self.n, self.total, self.format_dict = initial, total, {}
            if initial:   # the part of a file an earlier, interrupted download left
                transfer.add(initial)

        def update(self, n: int | float | None = 1) -> None:
            self.n += int(n or 0)
            transfer.add(int(n or 0))

        def update_transfer(self, n: int | float | None = 1) -> None:
            """Network bytes (Xet): counted once written, by update()."""

        def set_postfix_str(self, *args, **kwargs) -> None:
            """No display: the caller shows the whole download."""

        set_transfer_postfix_str = set_description = set_description_str = refresh = close = set_postfix_str

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

    return CountingBar


def download(plans: list[DownloadPlan], report: Report | None = None,
             should_stop: Callable[[], bool] | None = None) -> Fetched:
    """Fetch every file of `plans` the cache lacks, one after another (the big weights take
    the time; one stream each keeps the count simple), reporting (done, total) bytes. The
    branch, not the planned commit, is asked for, so huggingface_hub records where "main" is
    and the loaders find the files offline."""
    from huggingface_hub import hf_hub_download

    transfer = Transfer(sum(p.total for p in plans), sum(p.done for p in plans), report, should_stop)
    transfer.tell(force=True)   # the first figure: what the cache already holds
    start = transfer.done
    for current in plans:
        bar = _counting_bar(transfer)
        for path, size in current.files.items():
            if path in current.cached:
                continue
            transfer.add(0)   # a stop asked for while Xet wrote the last file (its threads cannot raise here)
            done = transfer.done
            hf_hub_download(current.repo, path, cache_dir=cache_dir(), tqdm_class=bar)
            transfer.finish_file(done + size)
    return Fetched(plans, transfer.done - start)


def fetch(name: str, report: Report | None = None, should_stop: Callable[[], bool] | None = None) -> Fetched:
    """Download registry entry `name` and what it needs; hub failures become one
    DreamsculptError saying what to do (see `download_error`)."""
    models = with_needs(name)
    if hub_offline():
        raise DreamsculptError("HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it (and check the "
                               "network), then download again.")
    current = models[0]
    try:
        plans = []
        for current in models:
            plans.append(plan(current.repo, current))
        return download(plans, report, should_stop)
    except DreamsculptError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub and disk failures are the user's to fix
        problem = download_error(exc, current.repo, current)
        if problem is None:
            raise
        raise problem from exc


def download_error(exc: BaseException, repo: str, model: ModelEntry | None) -> DreamsculptError | None:
    """A hub or disk failure as one error saying what to do; None for anything else (a bug)."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if access_refused(exc):
        licence = f"accept {model.licence} at {model.hub_url}" if model else \
            f"accept its terms at https://huggingface.co/{repo}"
        return DreamsculptError(f"The hub refused {repo} ({status or 'gated'}): it is gated. With your Hugging Face "
                                f"account {licence}, then log in here with `hf auth login` (or set HF_TOKEN) and "
                                "download again.")
    if isinstance(exc, RepositoryNotFoundError):
        return DreamsculptError(f"The hub has no model {repo} (or it is private: log in with `hf auth login`).")
    if is_offline_error(exc):
        return DreamsculptError(f"The model hub is unreachable ({first_line(exc)}). Check the network (or "
                                "HF_ENDPOINT), then download again: it goes on from where it stopped.")
    if isinstance(exc, HfHubHTTPError):
        return DreamsculptError(f"The model hub refused {repo} ({first_line(exc)}). Try again later.")
    if isinstance(exc, OSError) and exc.strerror:
        return DreamsculptError(f"Could not write to the model cache {cache_dir()} ({exc.strerror}). Free some "
                                "space, or point HF_HUB_CACHE at a disk with room.")
    return None


def access_refused(exc: BaseException) -> bool:
    """A 401 or 403 from the hub (a gated or private repo, or a bad token), anywhere in the
    chain of causes."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    return any(isinstance(e, GatedRepoError) or (isinstance(e, HfHubHTTPError) and getattr(
        e.response, "status_code", None) in (401, 403)) for e in exception_chain(exc))


# --- jobs: the run's callbacks, for the loaders ------------------------------------------------
@dataclass
class _JobReport:
    callbacks: Callbacks
    total_steps: Callable[[], int]   # the run's steps, for the "loading" report after a download


_REPORT: ContextVar[_JobReport | None] = ContextVar("dreamsculpt_download_report", default=None)


@contextmanager
def reporting(callbacks: Callbacks | None, total_steps: Callable[[], int]) -> Iterator[None]:
    """Within it, a download a loader needs reports through `callbacks` (tasks/__init__.py
    sets it around every task's run, for the CLI and the job server alike)."""
    token = _REPORT.set(_JobReport(callbacks or Callbacks(), total_steps))
    try:
        yield
    finally:
        _REPORT.reset(token)


def download_for_loader(repo: str) -> Fetched:
    """What guidance/hub.load_from_hub runs when the cache lacks `repo`: the registry's files
    (and what the entry needs) when it knows the repo, else the repo's loadable files; progress
    as stage "downloading" through the run's callbacks, then stage "loading". A 401/403 is a
    DreamsculptError; other hub failures propagate for the loader's own message."""
    job = _REPORT.get() or _JobReport(Callbacks(), lambda: 0)
    on_progress, started = job.callbacks.on_progress, time.perf_counter()
    model = entry_for_repo(repo)
    models = with_needs(model.name) if model else [None]
    plans = [plan(m.repo if m else repo, m) for m in models]
    first = sum(p.done for p in plans)

    def report(done: int, total: int) -> None:
        elapsed = time.perf_counter() - started
        rate = (done - first) / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        on_progress(Progress(done, total, 0.0, elapsed, eta, "downloading"))

    try:
        fetched = download(plans, report if on_progress else None, job.callbacks.should_cancel)
    except Exception as exc:
        if access_refused(exc):
            raise download_error(exc, repo, model) from exc
        raise
    if on_progress:
        on_progress(Progress(0, job.total_steps(), 0.0, time.perf_counter() - started, 0.0, "loading"))
    return fetched


# --- hub errors, shared with guidance/hub.py ------------------------------------------------
def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads the variable only at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return env or constants.is_offline_mode()


def is_offline_error(exc: BaseException) -> bool:
    """True when the failure comes from having no network (or HF_HUB_OFFLINE), anywhere in
    its chain of causes."""
    for e in exception_chain(exc):
        if _OFFLINE_ERRORS & {cls.__name__ for cls in type(e).__mro__}:
            return True
    return False


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__
