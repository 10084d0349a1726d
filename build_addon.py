"""Build the Blender extension: dist/dreamsculpt-<version>.zip, for Blender's "Install from Disk".

    python build_addon.py [--out DIR]

The version comes from the repository's VERSION file (its one source; the Python package
reads the same file), written into blender_manifest.toml inside the zip. The zip is
reproducible: the same sources give the same bytes.
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "blender_addon"
#: Files of the add-on; nothing else (no caches, no tests) goes into the zip.
PATTERNS = ("*.py", "blender_manifest.toml")


def version() -> str:
    text = (ROOT / "VERSION").read_text().strip()
    if not re.fullmatch(r"\d+\.\d+\.\d+", text):
        sys.exit(f"error: VERSION must be MAJOR.MINOR.PATCH (got {text!r})")
    return text


def build(out_dir: Path = ROOT / "dist") -> Path:
    v = version()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"dreamsculpt-{v}.zip"
    files = sorted({p for pattern in PATTERNS for p in SOURCE.glob(pattern)})
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            data = path.read_bytes()
            if path.name == "blender_manifest.toml":
                data = data.replace(b"@VERSION@", v.encode())
            info = zipfile.ZipInfo(path.name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            archive.writestr(info, data)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="folder for the zip (default: dist/)")
    print(build(parser.parse_args().out))


if __name__ == "__main__":
    main()
