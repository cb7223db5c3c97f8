# Everything but the C extension is in pyproject.toml.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "metrics_service._speedups",
            ["metrics_service/_speedups.c"],
            # Without a C compiler the package still installs: replay then takes
            # its Python path, which gives the same result ~2x slower.
            optional=True,
        )
    ]
)
