"""`dreamsculpt models list | download NAME | remove NAME`: the diffusion models the defaults
load, as the Hugging Face cache holds them (HF_HOME / HF_HUB_CACHE). The registry and the
cache are model_store.py's, downloading model_download.py's; this is only what the terminal
shows. User errors are DreamsculptErrors: the CLI prints `error: ...` and exits 1.
"""

from __future__ import annotations

import argparse
import sys

from .errors import DreamsculptError
from .model_store import NAMES, CachedModel, human_bytes

_NAME_HELP = f"one of {', '.join(NAMES)}"


def add_models(sub) -> None:
    """The `models` command and its three actions, on the CLI's subparsers."""
    models = sub.add_parser("models", help="list, download or remove the diffusion models (Hugging Face cache)",
                            description="The diffusion models dreamsculpt's defaults load, in the Hugging Face "
                                        "cache (HF_HUB_CACHE, else HF_HOME/hub).")
    actions = models.add_subparsers(dest="models_command", required=True)
    actions.add_parser("list", help="each model: present, partial or missing, its size and what it serves")
    download = actions.add_parser("download", help="download a model (again: only what is missing)")
    download.add_argument("name", help=_NAME_HELP)
    download.add_argument("--quiet", action="store_true", help="no progress bar")
    remove = actions.add_parser("remove", help="delete a model from the cache, freeing its space")
    remove.add_argument("name", help=_NAME_HELP)


def run_models(args: argparse.Namespace) -> int:
    """Run `dreamsculpt models ACTION`; 0 on success (errors are raised)."""
    if args.models_command == "list":
        return print_list()
    if args.models_command == "download":
        return download(args.name, args.quiet)
    return remove(args.name)


def print_list() -> int:
    from .model_store import cache_dir, list_models

    for model in list_models():
        print(f"{model.entry.name:<11} {model.state:<8} {_size(model):<18} {model.entry.repo}")
        for line in _details(model):
            print(f"{'':<12}{line}")
    print(f"Cache: {cache_dir()} (HF_HUB_CACHE, else HF_HOME/hub). `dreamsculpt models download NAME` "
          "fetches one; a job downloads what it needs on its own.")
    return 0


def _size(model: CachedModel) -> str:
    if model.state == "missing":
        return "-"
    if model.state == "present" or model.bytes_total is None:
        return human_bytes(model.bytes_on_disk)
    return f"{human_bytes(model.bytes_on_disk)} of {human_bytes(model.bytes_total)}"


def _details(model: CachedModel) -> list[str]:
    entry = model.entry
    lines = [f"serves: {entry.serves}"]
    if entry.needs:
        lines.append(f"needs: {', '.join(entry.needs)} (downloaded with it)")
    if model.state == "partial" and model.missing:
        shown = ", ".join(model.missing[:3]) + (f" and {len(model.missing) - 3} more" if len(model.missing) > 3 else "")
        lines.append(f"lacks: {shown} (`dreamsculpt models download {entry.name}` finishes it)")
    elif model.state == "partial":
        lines.append(f"an interrupted download (`dreamsculpt models download {entry.name}` finishes it)")
    if model.state != "missing":
        lines.append(f"path: {model.path}")
    lines.append(f"licence: {entry.licence}" if not entry.gated else entry.access_note())
    return lines


def download(name: str, quiet: bool = False) -> int:
    from tqdm import tqdm

    from .model_download import fetch
    from .model_store import cached_model, with_needs

    models = with_needs(name)
    if len(models) > 1:
        others = " and ".join(m.name for m in models[:-1])
        print(f"{name} needs {others}: downloading {'both' if len(models) == 2 else 'all of them'}.")
    for model in models:
        if model.gated:
            print(model.access_note())
    bar = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, disable=quiet, dynamic_ncols=True,
                       desc=name)
        bar.total, bar.n = total, done
        bar.refresh()

    try:
        fetched = fetch(name, report)
    except KeyboardInterrupt:
        print(f"stopped: run `dreamsculpt models download {name}` again to go on from there.", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    for model in models:
        cached = cached_model(model.name)
        if cached.state != "present":   # the hub's files are in, yet the check disagrees: say so
            raise DreamsculptError(f"{model.name} is still {cached.state} after the download (lacks "
                                   f"{', '.join(cached.missing) or 'files'}). Run the download again.")
        print(f"{model.name}: {human_bytes(cached.bytes_on_disk)} in {cached.path}")
    action = f"downloaded {human_bytes(fetched.downloaded)} ({fetched.fetched_files} files)" \
        if fetched.fetched_files else "already complete: nothing to download"
    print(f"{name}: {action}.")
    return 0


def remove(name: str) -> int:
    from .model_store import cached_model
    from .model_store import remove as remove_model

    path = cached_model(name).path
    there = path.exists()
    freed = remove_model(name)
    if freed or there:
        print(f"{name}: removed {path}, freed {human_bytes(freed)}.")
    else:
        print(f"{name}: not in the cache, nothing to free.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m dreamsculpt.cli_models ACTION ...`: the same as `dreamsculpt models ACTION ...`."""
    parser = argparse.ArgumentParser(prog="dreamsculpt")
    add_models(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_models(args)
    except DreamsculptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
