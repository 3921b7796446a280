"""Datasets: ImageFolder (ImageNet layout), image-caption folders, the procedural demo domain.

Submodules are imported explicitly (``from core.data import shapes``); this package imports nothing
heavy on its own.
"""
