"""Dreamsculpt: text or images to coloured 3D meshes by Score Distillation Sampling."""

__version__ = "0.1.0"
