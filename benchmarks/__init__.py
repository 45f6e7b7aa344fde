"""townhall's benchmarks and the harness they share with the tests.

Not part of the installed package: run from the repository root, ``python -m benchmarks``.
"""
