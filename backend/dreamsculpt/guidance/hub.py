"""What the Stable Diffusion and Zero123 loaders share: telling a hub id from a path, loading
from the Hugging Face cache, downloading what it lacks through the model manager (with
progress, see model_download.py), and one actionable error when that cannot be done.
huggingface_hub is imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..errors import DreamsculptError
from ..model_download import (
    download_for_loader,
    exception_chain,
    first_line,
    hub_offline,
    is_offline_error,
)

#: The original-checkpoint files a loader accepts (one file holding every part).
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
#: Re-exported: the loaders word their errors with these.
__all__ = ["SINGLE_FILE_SUFFIXES", "first_line", "hub_offline", "is_offline_error", "load_from_hub",
           "looks_like_path"]


def looks_like_path(model: str) -> bool:
    """Hub ids are 'name' or 'owner/name'; anything else that is not on disk is a path."""
    return (model.startswith((".", "/", "~", "\\")) or model.count("/") > 1 or "\\" in model
            or model.lower().endswith(SINGLE_FILE_SUFFIXES) or os.path.isabs(model))


def load_from_hub(repo: str, load_parts: Callable[[str, bool], Any], what: str, what_to_do: str) -> Any:
    """`load_parts(repo, local_files_only)` from the Hugging Face cache (works offline). When the
    cache lacks it and HF_HUB_OFFLINE is not set, the model manager downloads the files the
    loader reads (the registry's, for a repo it knows), reporting bytes as stage "downloading"
    through the run's callbacks, and it is loaded from the cache. Any failure is one
    DreamsculptError naming `what` and saying what to do (a gated repo: how to get access)."""
    try:
        return load_parts(repo, True)
    except (OSError, ValueError) as exc:
        error: Exception = exc
    if not hub_offline():
        try:
            download_for_loader(repo)
            return load_parts(repo, True)
        except DreamsculptError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure becomes one actionable error
            error = exc
    reason = "the model hub is unreachable"
    if _reached_hub(error) and not is_offline_error(error):
        reason = f"the model hub did not provide it ({first_line(error)})"
    raise DreamsculptError(f"Could not load {what} '{repo}': not a local folder or file, and "
                           f"{reason}. {what_to_do}") from error


def _reached_hub(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    return any(isinstance(e, HfHubHTTPError) for e in exception_chain(exc))
