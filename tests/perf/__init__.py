"""The benchmark behind README's Performance table: `python -m tests.perf` (or `make bench`).

Not collected by pytest (see `norecursedirs`); it reports figures and never fails on them.
"""
