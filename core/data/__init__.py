"""Datasets: ImageFolder (ImageNet layout), image-caption folders, and (in `core.data.build`) the
procedural demo domain, whose renderer lives with the demo in `core.demo.shapes`.

Submodules are imported explicitly (``from core.data import build``); this package imports nothing
heavy on its own.
"""
