"""The model manager: the registry (model_store.py), what a temporary Hugging Face cache holds
and removing from it, and downloads (model_download.py) from a local fake hub (fake_hub.py)
with progress in bytes: only the loaders' files, resumed, refused when gated, and reported by
a task's run as stage "downloading" before "loading". `dreamsculpt models` is driven through
cli_models.main, which cli.py's `models` command runs."""

from __future__ import annotations

import pytest
from dreamsculpt import cli_models
from dreamsculpt.callbacks import Callbacks
from dreamsculpt.config import (
    DEFAULT_DEPTH_MODEL,
    DEFAULT_IF_MODEL,
    DEFAULT_INPAINT_MODEL,
    DEFAULT_MVDREAM_MODEL,
    DEFAULT_SD_MODEL,
    DEFAULT_ZERO123_MODEL,
)
from dreamsculpt.errors import CancelledError, DreamsculptError
from dreamsculpt.model_download import fetch
from dreamsculpt.model_store import (
    MODELS,
    NAMES,
    cached_model,
    entry,
    human_bytes,
    models_for,
    select_files,
)
from fake_hub import IF_FILES, FakeHub, point_hub_at

#: A Stable Diffusion repo's layout (contents are stand-ins: nothing here is loaded): what the
#: loader reads, and beside it what it must not fetch (the single-file checkpoint, fp16 copies).
SD_READ = {"model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
           "scheduler/scheduler_config.json": b'{"beta_schedule": "scaled_linear"}',
           "tokenizer/vocab.json": b'{"a": 0}' * 50, "tokenizer/merges.txt": b"#version: 0.2\n",
           "text_encoder/config.json": b'{"hidden_size": 32}', "text_encoder/model.safetensors": b"t" * 30_000,
           "unet/config.json": b'{"sample_size": 32}', "unet/diffusion_pytorch_model.safetensors": b"u" * 50_000,
           "vae/config.json": b'{"latent_channels": 4}', "vae/diffusion_pytorch_model.safetensors": b"v" * 20_000}
SD_SKIPPED = {"v2-1_512-ema-pruned.ckpt": b"c" * 90_000, "unet/diffusion_pytorch_model.fp16.safetensors": b"h" * 25_000,
              "text_encoder/pytorch_model.bin": b"p" * 30_000, "feature_extractor/preprocessor_config.json": b"{}"}



@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake hub holding SD (with files to skip), MVDream, gated IF and a depth model, and
    this process's huggingface_hub pointed at it with an empty cache."""
    with FakeHub() as fake:
        fake.add(DEFAULT_SD_MODEL, {**SD_READ, **SD_SKIPPED})
        fake.add(DEFAULT_MVDREAM_MODEL, {"sd-v2.1-base-4view.pt": b"m" * 40_000, "sd-v1.5-4view.pt": b"o" * 9_000})
        fake.add(DEFAULT_IF_MODEL, IF_FILES, gated=True)
        fake.add(DEFAULT_DEPTH_MODEL, {"config.json": b'{"model_type": "depth_anything"}',
                                       "preprocessor_config.json": b"{}", "model.safetensors": b"d" * 12_000})
        point_hub_at(monkeypatch, fake.url, tmp_path / "hub")
        yield fake


def test_the_registry_names_the_configs_defaults_once_each():
    assert NAMES == ("sd", "mvdream", "if", "zero123", "sd-inpaint", "depth")
    assert [m.repo for m in MODELS] == [DEFAULT_SD_MODEL, DEFAULT_MVDREAM_MODEL, DEFAULT_IF_MODEL,
                                        DEFAULT_ZERO123_MODEL, DEFAULT_INPAINT_MODEL, DEFAULT_DEPTH_MODEL]
    assert entry("mvdream").needs == ("sd",) and "mvdream" in entry("sd").serves
    assert [m.name for m in MODELS if m.gated] == ["if"]
    assert "hf auth login" in entry("if").access_note() and "non-commercial" in entry("if").licence
    with pytest.raises(DreamsculptError, match="sd, mvdream, if, zero123, sd-inpaint, depth"):
        entry("stable-diffusion")


def test_only_the_files_a_loader_reads_are_selected():
    sizes = {path: len(data) for path, data in {**SD_READ, **SD_SKIPPED}.items()}
    assert set(select_files(sizes, entry("sd").files)) == set(SD_READ)
    assert set(select_files({p: 1 for p in IF_FILES} | {"unet/diffusion_pytorch_model.safetensors": 9,
                                                        "safety_checker/model.fp16.safetensors": 9},
                            entry("if").files)) == set(IF_FILES)
    # Zero123 repos ship .bin or .safetensors: one set per folder, safetensors first.
    zero123 = {"model_index.json": 1, "unet/config.json": 1, "unet/diffusion_pytorch_model.bin": 3,
               "unet/diffusion_pytorch_model.safetensors": 2, "cc_projection/diffusion_pytorch_model.bin": 1,
               "image_encoder/pytorch_model.bin": 4, "README.md": 1}
    assert set(select_files(zero123, entry("zero123").files)) == {
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "cc_projection/diffusion_pytorch_model.bin", "image_encoder/pytorch_model.bin"}
    # A repo the registry does not know: its loadable files, no other framework's, no duplicates.
    assert set(select_files(sizes | {"unet/flax_model.msgpack": 5}, None)) == set(SD_READ) | {
        "feature_extractor/preprocessor_config.json"}
    assert set(select_files({"config.json": 1, "model.safetensors": 2, "pytorch_model.bin": 2}, None)) == {
        "config.json", "model.safetensors"}


def test_a_job_needs_the_models_its_request_loads():
    from dreamsculpt.requests import ImageTo3DRequest, SceneWalkRequest, TextTo3DRequest

    text = {"kind": "text_to_3d", "prompt": "a red cube"}
    assert models_for(TextTo3DRequest.model_validate(text)) == {"sd"}
    assert models_for(TextTo3DRequest.model_validate({**text, "prior": "mvdream"})) == {"mvdream", "sd"}
    assert models_for(TextTo3DRequest.model_validate({**text, "prior": "builtin"})) == set()
    assert models_for(TextTo3DRequest.model_validate({**text, "model": "/models/my-sd"})) == set()
    image = {"kind": "image_to_3d", "image": "0" * 64}
    assert models_for(ImageTo3DRequest.model_validate(image)) == {"zero123"}
    assert models_for(ImageTo3DRequest.model_validate({**image, "prompt": "a mug", "text_weight": 0.5})) == {
        "zero123", "sd"}
    camera = {"matrix_world": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}
    walk = SceneWalkRequest.model_validate({"kind": "scene_walk", "prompt": "a room", "camera": camera,
                                            "motion": "forward"})
    assert models_for(walk) == {"sd-inpaint", "depth"}


def _cache_files(repo: str, files: dict[str, bytes]) -> None:
    """Put files into the cache with huggingface_hub's own download (not the code under test)."""
    from huggingface_hub import hf_hub_download

    for path in files:
        hf_hub_download(repo, path)


def test_list_shows_what_the_cache_holds_and_remove_frees_one(hub, capsys):
    assert {m.entry.name: m.state for m in map(cached_model, NAMES)} == dict.fromkeys(NAMES, "missing")  # no cache yet
    _cache_files(DEFAULT_SD_MODEL, SD_READ)
    _cache_files(DEFAULT_DEPTH_MODEL, {"config.json": b""})   # an unfinished download

    assert cli_models.main(["list"]) == 0
    out = capsys.readouterr().out
    sd_size = human_bytes(cached_model("sd").bytes_on_disk)
    assert f"sd          present  {sd_size}" in out
    assert "default of --prior sd" in out and "the base (VAE, text encoder) of mvdream" in out
    assert "depth       partial" in out and "lacks: preprocessor_config.json, model.safetensors" in out
    assert "mvdream     missing" in out and "needs: sd" in out and "hf auth login" in out
    assert str(cached_model("sd").path) in out and out.count("path: ") == 2

    sd = cached_model("sd")
    assert sd.bytes_total == sum(map(len, SD_READ.values())) and sd.bytes_on_disk > 100_000
    assert cli_models.main(["remove", "sd"]) == 0
    assert f"freed {human_bytes(sd.bytes_on_disk)}" in capsys.readouterr().out
    assert not sd.path.exists() and cached_model("sd").state == "missing"
    assert cached_model("depth").state == "partial"          # the others are left alone
    assert cli_models.main(["remove", "sd"]) == 0
    assert "not in the cache" in capsys.readouterr().out


def test_a_cached_listing_tells_a_complete_copy_from_a_partial_one(hub):
    from huggingface_hub import snapshot_download

    snapshot_download(DEFAULT_SD_MODEL, allow_patterns=["*.json", "tokenizer/*", "unet/*"])   # caches the listing
    sd = cached_model("sd")
    assert sd.state == "partial" and sd.bytes_total == sum(map(len, SD_READ.values()))
    assert set(sd.missing) == {"text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"}


def test_unknown_names_are_one_error_line_listing_the_known_ones(capsys):
    for action in ("download", "remove"):
        assert cli_models.main([action, "sdxl"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: No model called 'sdxl'") and "\n" not in err
        assert "sd, mvdream, if, zero123, sd-inpaint, depth" in err


def test_download_fetches_the_loaders_files_with_what_it_needs_and_again_nothing(hub, capsys):
    assert cli_models.main(["download", "mvdream", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "mvdream needs sd: downloading both." in out
    assert set(hub.served) == {(DEFAULT_SD_MODEL, p) for p in SD_READ} | {
        (DEFAULT_MVDREAM_MODEL, "sd-v2.1-base-4view.pt")}
    assert cached_model("sd").state == cached_model("mvdream").state == "present"
    sent = hub.bytes_sent
    assert cli_models.main(["download", "mvdream", "--quiet"]) == 0
    assert "already complete: nothing to download" in capsys.readouterr().out
    assert hub.bytes_sent == sent


def test_a_stopped_download_goes_on_with_what_is_missing(hub):
    total = sum(map(len, SD_READ.values()))
    with pytest.raises(CancelledError):   # stops once the first large file is in
        fetch("sd", should_stop=lambda: cached_model("sd").bytes_on_disk > 25_000)
    kept = cached_model("sd")
    assert kept.state == "partial" and 0 < kept.bytes_on_disk < total
    first = dict(hub.served)
    reports: list[tuple[int, int]] = []
    fetched = fetch("sd", lambda done, all_: reports.append((done, all_)))
    assert reports[0][0] >= 25_000 and reports[-1] == (total, total)
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
    assert fetched.downloaded <= total - 25_000
    assert all(hub.served[key] == 1 for key in first if key[1] not in kept.missing)   # nothing fetched twice


def test_a_gated_model_says_to_accept_its_licence_and_log_in(hub, capsys):
    assert cli_models.main(["download", "if", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "Gated: accept DeepFloyd's IF licence" in captured.out
    err = captured.err.strip()
    assert err.startswith("error: The hub refused DeepFloyd/IF-I-XL-v1.0 (401): it is gated") and "\n" not in err
    assert "https://huggingface.co/DeepFloyd/IF-I-XL-v1.0" in err and "hf auth login" in err


def test_offline_nothing_downloads_and_the_error_says_why(capsys):
    assert cli_models.main(["download", "depth"]) == 1       # conftest: HF_HUB_OFFLINE=1
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err


def test_a_tasks_run_reports_the_download_in_bytes_then_loading(hub, tiny_sd_path, tmp_path):
    """The real Stable Diffusion loader, through load_from_hub and the tasks' seam: the tiny model
    comes from the fake hub as the default model, reported as stage "downloading" (bytes), then
    "loading"; the run is cancelled as soon as it loads."""
    from dreamsculpt.requests import TextTo3DRequest
    from dreamsculpt.tasks import TASKS

    hub.add_folder(DEFAULT_SD_MODEL, tiny_sd_path, extra=SD_SKIPPED)
    expected = sum(select_files(
        {p: len(d) for p, d in hub.repos[DEFAULT_SD_MODEL].files.items()}, entry("sd").files).values())
    seen = []
    request = TextTo3DRequest.model_validate({"kind": "text_to_3d", "prompt": "a red cube", "steps": 3,
                                              "preset": "preview", "resolution": 16})
    callbacks = Callbacks(on_progress=seen.append, should_cancel=lambda: any(p.stage == "loading" for p in seen))
    with pytest.raises(CancelledError):
        TASKS["text_to_3d"].run(request, tmp_path / "out", callbacks, device="cpu")
    downloading = [p for p in seen if p.stage == "downloading"]
    assert downloading[0].step == 0 and downloading[-1].step == downloading[-1].total == expected
    assert [p.step for p in downloading] == sorted(p.step for p in downloading) and len(downloading) >= 3
    after = seen[len(downloading)]
    assert (after.stage, after.step, after.total) == ("loading", 0, 3)
    assert not any(path.endswith((".ckpt", ".fp16.safetensors", ".bin")) for _, path in hub.served)


def test_the_addon_reads_sizes_and_a_downloading_jobs_bytes_as_the_cli_does():
    import subprocess
    import sys

    from addon_modules import ADDON, load

    watch = load("model_watch")
    for count in (0, 999, 12_345, 335_000_000, 4_900_000_000, 5_210_000_000_000):
        assert watch.byte_size(count) == human_bytes(count)
    assert watch.download_text(1_234_000_000, 4_900_000_000) == "1.2 / 4.9 GB"
    assert watch.download_text(0, 350_000_000) == "0 / 350 MB"
    # A model's bytes overflow Blender's integer properties (2**31 - 1): the panel keeps KiB.
    job = {"stage": "downloading", "step": 1_234_000_000, "total": 4_900_000_000}
    step, total = watch.stored_progress(job)
    assert total < 2**31 - 1 and watch.progress_text("downloading", step, total) == "Downloading 1.2 / 4.9 GB"
    assert watch.stored_progress({"stage": "optimising", "step": 40, "total": 100}) == (40, 100)
    assert watch.progress_text("optimising", 40, 100) == "optimising 40/100"
    assert watch.model_summary({"state": "partial", "bytes_on_disk": 1_200_000_000, "bytes_total": 4_900_000_000,
                                "download": None}) == "partial · 1.2 GB of 4.9 GB"
    assert watch.model_summary({"state": "missing", "bytes_on_disk": 0, "bytes_total": None,
                                "download": {"done": 0, "total": 0}}) == "downloading…"
    code = ("import sys, types; sys.modules['bpy'] = None; pkg = types.ModuleType('addon'); "
            f"pkg.__path__ = [{str(ADDON)!r}]; sys.modules['addon'] = pkg; import addon.model_watch")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_job_on_a_gated_model_fails_saying_how_to_get_access(hub):
    from dreamsculpt.guidance.hub import load_from_hub

    def not_cached(repo: str, local_files_only: bool):
        raise OSError(f"{repo} is not in the cache")

    with pytest.raises(DreamsculptError, match="gated") as refused:
        load_from_hub(DEFAULT_IF_MODEL, not_cached, "DeepFloyd IF model", "Use --prior sd.")
    assert "hf auth login" in str(refused.value) and "DeepFloyd's IF licence" in str(refused.value)


def test_dreamsculpt_models_is_the_clis_models_command(capsys):
    from dreamsculpt import cli

    commands = next(a for a in cli.build_parser()._subparsers._group_actions if a.dest == "command").choices
    if "models" not in commands:
        pytest.skip("cli.py has no `models` command yet: the model manager's report gives the diff")
    assert cli.main(["models", "remove", "sdxl"]) == 1
    assert capsys.readouterr().err.startswith("error: No model called 'sdxl'")
