"""Dreamsculpt: text or images to coloured 3D meshes by Score Distillation Sampling."""

from importlib import metadata

try:  # the repository's VERSION file, through the installed package's metadata
    __version__ = metadata.version("dreamsculpt")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
