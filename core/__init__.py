"""VA-π Workbench engine: models, the VA-π objective and trainer, data, evaluation and runs.

Importable without Gradio. Entry points: ``python -m core --help``.
"""
__version__ = "0.1.0"
