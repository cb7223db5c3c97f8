# Everything but the C extension is in pyproject.toml.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "metrics_service._native._speedups",
            ["metrics_service/_native/_speedups.c"],
            # Without a C compiler the package still installs: replay and ingest take
            # their Python paths, which give the same results, slower (README.md).
            optional=True,
        )
    ]
)
