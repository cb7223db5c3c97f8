"""A package, so that e2e/conftest.py does not replace tests/conftest.py as `conftest`."""
