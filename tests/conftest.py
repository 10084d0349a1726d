"""Shared test set-up: nothing downloads, nothing is read from or written to ~/.cache.

Session-wide (also inherited by the CLI subprocesses the tests start):

* DREAMSCULPT_CACHE_DIR points at a fresh folder, so the built-in shape library is rendered
  once per session and a stale user cache can neither help nor break a test.
* HF_HUB_OFFLINE=1: huggingface_hub refuses every request.
* HF_HOME and HF_HUB_CACHE point at a fresh folder: no test (nor a server it starts, whose
  DELETE /models/{name} empties the cache) reads or deletes the user's downloaded models.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def dreamsculpt_cache(tmp_path_factory):
    """The session's cache folder (DREAMSCULPT_CACHE_DIR)."""
    folder = tmp_path_factory.mktemp("dreamsculpt-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DREAMSCULPT_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session", autouse=True)
def hf_cache(tmp_path_factory):
    """The session's Hugging Face folder; huggingface_hub reads it at import, so its constant
    is patched as well."""
    import huggingface_hub.constants

    folder = tmp_path_factory.mktemp("hf-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(folder))
        mp.setenv("HF_HUB_CACHE", str(folder / "hub"))
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder / "hub"))
        yield folder


@pytest.fixture(scope="session", autouse=True)
def hf_offline():
    """huggingface_hub reads HF_HUB_OFFLINE at import, so the constant is patched as well."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory) -> str:
    """A tiny random Stable Diffusion pipeline saved as a diffusers folder (see tiny_sd.py)."""
    from tiny_sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "model")



@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """A real `dreamsculpt serve` process shared by one test module (see server_harness.py)."""
    from server_harness import ServerProcess

    srv = ServerProcess(tmp_path_factory.mktemp(request.module.__name__)).start()
    yield srv
    srv.stop()


@pytest.fixture
def api(server):
    """An HTTP client of `server` that sends its token."""
    with server.client() as client:
        yield client
