"""The benchmarks, importable as a package (``from benchmarks.harness import ...``).

Each ``bench_*.py`` is also a script: ``python benchmarks/bench_x.py`` (see README.md).
"""
