"""What the Stable Diffusion and Zero123 loaders share: telling a hub id from a path, loading
from the Hugging Face cache or hub with one actionable error when offline, and short error
texts. huggingface_hub is imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import DreamsculptError

#: The original-checkpoint files a loader accepts (one file holding every part).
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
#: Exception class names that mean "no network" (huggingface_hub, httpx and requests each have
#: their own, so they are matched by name).
_OFFLINE_ERRORS = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError",
                   "TransportError", "TimeoutException", "Timeout", "TimeoutError"}


def looks_like_path(model: str) -> bool:
    """Hub ids are 'name' or 'owner/name'; anything else that is not on disk is a path."""
    return (model.startswith((".", "/", "~", "\\")) or model.count("/") > 1 or "\\" in model
            or model.lower().endswith(SINGLE_FILE_SUFFIXES) or os.path.isabs(model))


def load_from_hub(repo: str, load_parts: Callable[[str, bool], Any], what: str, what_to_do: str) -> Any:
    """`load_parts(repo, local_files_only)` from the Hugging Face cache first (works offline),
    then the network unless HF_HUB_OFFLINE; any failure is one DreamsculptError naming `what`
    and saying what to do."""
    try:
        return load_parts(repo, True)
    except (OSError, ValueError) as exc:
        error: Exception = exc
    if not hub_offline():
        try:
            # One request without retries first: with no network, hub downloads back off
            # and retry for about 25 seconds before failing.
            from huggingface_hub import model_info

            model_info(repo, timeout=10)
            return load_parts(repo, False)
        except DreamsculptError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure becomes one actionable error
            error = exc
    reason = "the model hub is unreachable"
    if _reached_hub(error) and not is_offline_error(error):
        reason = f"the model hub did not provide it ({first_line(error)})"
    raise DreamsculptError(f"Could not load {what} '{repo}': not a local folder or file, and "
                           f"{reason}. {what_to_do}") from error


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads the variable only at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return env or constants.is_offline_mode()


def is_offline_error(exc: BaseException) -> bool:
    """True when the failure comes from having no network (or HF_HUB_OFFLINE), anywhere in
    its chain of causes."""
    for e in _exception_chain(exc):
        if _OFFLINE_ERRORS & {cls.__name__ for cls in type(e).__mro__}:
            return True
    return False


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _reached_hub(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    return any(isinstance(e, HfHubHTTPError) for e in _exception_chain(exc))
