"""The diffusion models dreamsculpt knows, and what of each the Hugging Face cache holds.

One typed table (`MODELS`): a short name, its hub repo, the files its loader reads (allow
patterns, matched as huggingface_hub matches them), what it serves and its licence. The cache
is read through huggingface_hub (`scan_cache_dir`, `get_cached_repo_tree`) and emptied through
its deletion strategies, so HF_HOME / HF_HUB_CACHE are respected and its layout stays its own.
Downloading is model_download.py. huggingface_hub is imported inside the functions so the
server and the CLI can import this module cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any

from .config import (
    DEFAULT_DEPTH_MODEL,
    DEFAULT_IF_MODEL,
    DEFAULT_INPAINT_MODEL,
    DEFAULT_MODELS,
    DEFAULT_MVDREAM_MODEL,
    DEFAULT_SD_MODEL,
    DEFAULT_ZERO123_MODEL,
)
from .errors import DreamsculptError

#: Weight files: in each folder one set of them is kept (see `select_files`).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
#: Files of other frameworks, never read by the loaders (a repo without a registry entry).
FOREIGN_SUFFIXES = (".msgpack", ".h5", ".onnx", ".onnx_data", ".ot", ".tflite", ".mlmodel", ".gguf")
STATES = ("present", "partial", "missing")


@dataclass(frozen=True)
class ModelEntry:
    """A model the CLI's and the server's defaults load. `files`: allow patterns (fnmatch, as
    huggingface_hub's filter; a pattern without wildcards names a file the loader needs);
    `needs`: entries it loads alongside (downloaded with it)."""

    name: str
    repo: str
    files: tuple[str, ...]
    serves: str
    licence: str
    needs: tuple[str, ...] = ()
    gated: bool = False

    @property
    def required(self) -> tuple[str, ...]:
        """The files named outright: a copy without one of them is incomplete."""
        return tuple(p for p in self.files if not any(c in p for c in "*?["))

    @property
    def hub_url(self) -> str:
        return f"https://huggingface.co/{self.repo}"

    def access_note(self) -> str:
        """What a gated model asks of the user before it downloads ("" when nothing)."""
        if not self.gated:
            return ""
        return (f"Gated: accept {self.licence} at {self.hub_url} (logged in), then log in here with "
                "`hf auth login` (or set HF_TOKEN).")


#: What the diffusers Stable Diffusion loaders read: configs and the non-variant safetensors.
_SD_FILES = ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/*", "text_encoder/config.json",
             "text_encoder/model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
             "vae/config.json", "vae/diffusion_pytorch_model.safetensors")
#: DeepFloyd IF stage I: its fp16 weight files (the fp32 UNet alone is ~17 GB), no safety checker.
_IF_FILES = ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/*", "text_encoder/config.json",
             "text_encoder/*.index.fp16.json", "text_encoder/*fp16*.safetensors", "unet/config.json",
             "unet/diffusion_pytorch_model.fp16.safetensors")
#: Zero123 in diffusers layout: its weights come as .safetensors or .bin (select_files keeps one).
_ZERO123_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "image_encoder/config.json",
                  "scheduler/*", "feature_extractor/*", "*_projection/*", "unet/diffusion_pytorch_model.*",
                  "vae/diffusion_pytorch_model.*", "image_encoder/*.safetensors", "image_encoder/*.bin")

MODELS: tuple[ModelEntry, ...] = (
    ModelEntry("sd", DEFAULT_SD_MODEL, _SD_FILES,
               "default of --prior sd; the text guidance of image-to-3d (--text-weight); the base (VAE, text "
               "encoder) of mvdream", "the CreativeML Open RAIL++-M licence"),
    ModelEntry("mvdream", DEFAULT_MVDREAM_MODEL, ("sd-v2.1-base-4view.pt",),
               "default of --prior mvdream (its multi-view UNet; needs sd for the VAE and text encoder)",
               "the licence on its model card (CreativeML Open RAIL-M)", needs=("sd",)),
    ModelEntry("if", DEFAULT_IF_MODEL, _IF_FILES, "default of --prior if (stage I, fp16 weights)",
               "DeepFloyd's IF licence (non-commercial research terms)", gated=True),
    ModelEntry("zero123", DEFAULT_ZERO123_MODEL, _ZERO123_FILES,
               "default of image-to-3d and novel-views (--prior zero123)", "the licence on its model card"),
    ModelEntry("sd-inpaint", DEFAULT_INPAINT_MODEL, _SD_FILES, "default inpainting model of scene-walk --prior sd",
               "the CreativeML Open RAIL++-M licence"),
    ModelEntry("depth", DEFAULT_DEPTH_MODEL, ("config.json", "preprocessor_config.json", "model.safetensors"),
               "default depth model of scene-walk --prior sd (--depth-model)", "Apache-2.0 (the Small model)"),
)
NAMES = tuple(entry.name for entry in MODELS)


def entry(name: str) -> ModelEntry:
    """The entry called `name`; a DreamsculptError listing the known names otherwise."""
    for candidate in MODELS:
        if candidate.name == name:
            return candidate
    raise DreamsculptError(f"No model called {name!r}: dreamsculpt knows {', '.join(NAMES)} "
                           "(`dreamsculpt models list` shows them).")


def entry_for_repo(repo: str) -> ModelEntry | None:
    """The entry whose hub repo is `repo` (None: a model the registry does not know)."""
    return next((candidate for candidate in MODELS if candidate.repo == repo), None)


def with_needs(name: str) -> list[ModelEntry]:
    """`name`'s entry after those it needs, each once (the order they download in)."""
    ordered: list[ModelEntry] = []

    def visit(current: ModelEntry) -> None:
        for needed in current.needs:
            visit(entry(needed))
        if current not in ordered:
            ordered.append(current)

    visit(entry(name))
    return ordered


def models_for(request: Any) -> set[str]:
    """The registry entries (names, with what they need) a job request loads: for the server's
    "not while a job uses it". Read by field name, so every kind's request fits."""
    repos: set[str] = set()
    prior, model = getattr(request, "prior", None), getattr(request, "model", None)
    if request.kind == "text_to_3d" and prior in DEFAULT_MODELS:
        repos.add(model or DEFAULT_MODELS[prior])   # none given: the prior's own
    elif request.kind in ("image_to_3d", "novel_views") and prior == "zero123":
        repos.add(model)
    elif request.kind == "scene_walk" and prior == "sd":
        repos.update((model, getattr(request, "depth_model", None)))
    if getattr(request, "text_weight", 0) and getattr(request, "text_model", None):
        repos.add(request.text_model)
    names = {found.name for found in map(entry_for_repo, repos - {None}) if found}
    return {needed.name for name in names for needed in with_needs(name)}


def select_files(listing: dict[str, int], patterns: tuple[str, ...] | None) -> dict[str, int]:
    """The files of a repo listing (path -> bytes) a loader reads: those matching `patterns`
    (None: every file but other frameworks', and, in a diffusers layout, not the single-file
    checkpoints beside it); then in each folder one set of weights, as diffusers picks:
    .safetensors over pickles, and a plain file over its variants (fp16, ema...)."""
    if patterns is None:
        diffusers = "model_index.json" in listing
        chosen = [p for p in listing if not p.endswith(FOREIGN_SUFFIXES)
                  and not (diffusers and "/" not in p and p.endswith(WEIGHT_SUFFIXES))]
    else:
        chosen = [p for p in listing if any(fnmatchcase(p, pattern) for pattern in patterns)]
    weights: dict[str, list[str]] = {}
    for path in chosen:
        if path.endswith(WEIGHT_SUFFIXES):
            weights.setdefault(str(PurePosixPath(path).parent), []).append(path)
    dropped = {path for group in weights.values() for path in group} - \
        {path for group in weights.values() for path in _preferred_weights(group)}
    return {p: listing[p] for p in chosen if p not in dropped}


def _preferred_weights(paths: list[str]) -> list[str]:
    plain = [p for p in paths if PurePosixPath(p).name.count(".") == 1] or paths   # not name.fp16.ext
    safe = [p for p in plain if p.endswith(".safetensors")]
    return safe or plain


@dataclass
class CachedModel:
    """What the Hugging Face cache holds of one entry. `bytes_total`: a complete copy's size
    (known from a cached tree listing of the repo, or when the copy is complete); `missing`:
    the files a complete copy still lacks, where known."""

    entry: ModelEntry
    state: str                        # one of STATES
    bytes_on_disk: int                # what `remove` frees (partial downloads included)
    bytes_total: int | None
    path: Path                        # the repo's folder in the cache (there or not)
    missing: tuple[str, ...] = ()


def cache_dir() -> Path:
    """The Hugging Face hub cache in use (HF_HUB_CACHE, else HF_HOME/hub, else the default)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def _scan():
    """huggingface_hub's scan of the cache; None when there is no cache folder yet."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        return scan_cache_dir(cache_dir())
    except CacheNotFound:
        return None


def _repo_path(repo: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir().expanduser().resolve() / repo_folder_name(repo_id=repo, repo_type="model")


def list_models() -> list[CachedModel]:
    """Every entry of MODELS, with what the cache holds of it (one scan of the cache)."""
    scan = _scan()
    return [_cached(candidate, scan) for candidate in MODELS]


def cached_model(name: str) -> CachedModel:
    return _cached(entry(name), _scan())


def _cached(model: ModelEntry, scan) -> CachedModel:
    path = _repo_path(model.repo)
    repo = next((r for r in scan.repos if r.repo_id == model.repo and r.repo_type == "model"), None) if scan else None
    partial = sum(f.size_on_disk for f in scan.incomplete_files if f.file_path.parent.parent == path) if scan else 0
    on_disk = (repo.size_on_disk if repo else 0) + partial
    if repo is None or not repo.revisions:
        return CachedModel(model, "partial" if partial else "missing", on_disk, None, path, model.required)
    revision = repo.refs.get("main") or max(repo.revisions, key=lambda r: r.last_modified)
    cached = {f.file_path.relative_to(revision.snapshot_path).as_posix(): f.size_on_disk for f in revision.files}
    listing = _cached_listing(model.repo, revision.commit_hash)
    if listing is not None:
        expected: dict[str, int | None] = dict(select_files(listing, model.files))
    else:   # no listing: the files named outright must be there
        expected = dict.fromkeys(model.required)
    missing = tuple(p for p in expected if p not in cached)
    state = "partial" if missing or partial else "present"
    total = sum(v for v in expected.values() if v is not None) if listing is not None else None
    if state == "present" and total is None:
        total = sum(select_files(cached, model.files).values())
    return CachedModel(model, state, on_disk, total, repo.repo_path, missing)


def _cached_listing(repo: str, commit: str) -> dict[str, int] | None:
    """The repo's file listing at `commit` as huggingface_hub cached it (snapshot_download
    writes one), or None."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        return {f.path: f.size for f in get_cached_repo_tree(repo, revision=commit, cache_dir=cache_dir())}
    except (CachedRepoTreeNotFoundError, OSError, ValueError):
        return None


def remove(name: str) -> int:
    """Delete every cached revision of `name`'s repo and its partial downloads (not what it
    needs: those serve other defaults too). Returns the bytes freed (0: nothing was there)."""
    model = entry(name)
    scan = _scan()
    if scan is None:
        return 0
    path = _repo_path(model.repo)
    repo = next((r for r in scan.repos if r.repo_id == model.repo and r.repo_type == "model"), None)
    partial = [f for f in scan.incomplete_files if f.file_path.parent.parent == path]
    freed = 0
    if repo is not None and repo.revisions:
        strategy = scan.delete_revisions(*(r.commit_hash for r in repo.revisions))
        freed = strategy.expected_freed_size
        strategy.execute()   # every revision: the whole repo folder goes, partial downloads too
    for leftover in partial:
        if leftover.file_path.exists():
            leftover.file_path.unlink()
        freed += leftover.size_on_disk
    return freed


def human_bytes(count: int | None) -> str:
    """Decimal units, as the hub shows sizes: 4.9 GB, 335 MB, 12 kB."""
    if count is None:
        return "?"
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            break
        value /= 1000
    return f"{value:.0f} {unit}" if unit in ("B", "kB") or value >= 100 else f"{value:.1f} {unit}"
