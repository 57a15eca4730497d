"""Measurements behind fedmed's performance choices.

``python -m benchmarks all`` runs every section and writes docs/benchmarks.md (see
``benchmarks/__main__.py``); single measurements also run on their own as
``python -m benchmarks.<name>`` (``dp_cost``, ``privacy_utility``, ``gpu_path``).
Run from the repository root: Opacus installs a top-level package that is also called
``benchmarks``.
"""
