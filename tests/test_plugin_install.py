"""The package as users meet it: a wheel in a fresh venv with pytest and nothing else.

The `pytest11` entry point loads metrics_service.testing in every pytest run of a
project that installs the package, so that module must import with the package's own
dependencies alone (not the `[test]` extra), and cheaply.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Independent of the C-or-Python choice: make test runs it in its first pass only.
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ["pyproject.toml", "setup.py", "README.md", "metrics_service"]

USER_TESTS = {
    # A project whose tests never use the fixture still loads the plugin.
    "test_plain.py": """
        def test_nothing():
            assert True
        """,
    "test_tracking.py": """
        import sys

        import metrics_service


        from metrics_service.client import TAG_SCRIPT


        def test_signup_is_tracked(metrics_server, metrics):
            # The installed wheel, not the checkout the suite runs from.
            assert metrics_service.__file__.startswith(sys.prefix)
            metrics.post({"event": "signup", "visitor_id": "visitor-1", "metadata": {"n": 1}})
            [event] = metrics.wait_for("signup", meta={"n": 1})
            assert event["test_id"] == metrics.test_id
            assert metrics_server.client.snapshot(event="signup")["total"] == 1
            # What a browser page gets from the plugin ships in the wheel.
            assert "/tracker.js" in metrics.tracker_tag()
            assert "sendBeacon" in TAG_SCRIPT.read_text()
        """,
}
# Loading the plugin imports neither the app nor the client's HTTP library.
LAZY_CHECK = """
import sys
import pytest
import metrics_service.testing
eager = {"httpx", "starlette", "uvicorn", "metrics_service.app"}
assert not eager & set(sys.modules), sorted(eager & set(sys.modules))
"""


def run(
    argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    if env is None:  # the build and the venv's bytecode stay in their temporary folders
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, (
        f"{argv} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


def user_env() -> dict[str, str]:
    """This environment without what ties it to this suite or this checkout."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTEST_", "METRICS_", "COV_"))
        and name
        not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONPYCACHEPREFIX")
    }


@pytest.mark.slow
@pytest.mark.timeout(300)  # a cold pip cache downloads the dependencies
def test_wheel_with_pytest_alone_runs_a_users_suite(tmp_path: Path) -> None:
    # Build from a copy, so that the checkout gets no build/ folder.
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name,
                source / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"),
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run(
        [*pip, "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), str(source)]
    )
    [wheel] = wheels.glob("metrics_service-*.whl")

    # A fresh venv with the wheel and pytest: no [test] extra.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run([*pip, "--python", str(python), "install", "--quiet", str(wheel), "pytest"])

    project = tmp_path / "project"
    project.mkdir()
    for name, text in USER_TESTS.items():
        (project / name).write_text(textwrap.dedent(text))
    env = user_env()
    run([str(python), "-c", LAZY_CHECK], cwd=project, env=env)
    for name in USER_TESTS:
        result = run(
            [str(venv / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", name],
            cwd=project,
            env=env,
        )
        assert "1 passed" in result.stdout, result.stdout
