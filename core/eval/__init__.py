"""Evaluation: feature extractors, FID/IS/precision/recall, embedding-shift analysis, sample I/O.

Modules (import the one you need; this package imports nothing heavy):
``metrics`` (numbers from features), ``extractors`` (networks by name, torch-fidelity route),
``reference`` (ADM/LlamaGen ``.npz`` batches), ``embeddings`` (t-SNE/UMAP/KDE of real vs base vs
aligned), ``geneval`` (GenEval prompts and image-folder layout).
"""
