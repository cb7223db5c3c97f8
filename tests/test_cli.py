from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from metrics_service.cli import main
from metrics_service.testing import CLEAN_EXIT, MetricsServer, free_port

# Flags, variables and their errors are independent of the C-or-Python choice: make test
# runs it in its first pass only (the Python twins of the C code are not on its path).
pytestmark = pytest.mark.once


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("METRICS_"):
            monkeypatch.delenv(name)
    # A valid sink, so that only the setting under test is wrong.
    monkeypatch.setenv("METRICS_JSONL", str(tmp_path / "m.jsonl"))


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("metrics-service: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "name", "words"),
    [
        (["--capacity", "0"], "--capacity", "between 1 and 10,000,000, got 0"),
        (["--capacity", "abc"], "--capacity", "expected an integer, got 'abc'"),
        (["--capacity", "10000001"], "--capacity", "10,000,000"),
        (["--port", "abc"], "--port", "'abc'"),
        (["--port", "65536"], "--port", "65536"),
    ],
)
def test_bad_flag(
    capsys: pytest.CaptureFixture[str], argv: list[str], name: str, words: str
) -> None:
    assert main(["serve", *argv]) == 2
    line = one_error_line(capsys)
    assert f"error: {name}: " in line
    assert words in line


@pytest.mark.parametrize(
    ("var", "value", "words"),
    [
        ("METRICS_RING_CAPACITY", "0", "got 0"),
        ("METRICS_RING_CAPACITY", "abc", "'abc'"),
        ("METRICS_PORT", "eighty", "'eighty'"),
    ],
)
def test_bad_variable(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    var: str,
    value: str,
    words: str,
) -> None:
    monkeypatch.setenv(var, value)
    assert main(["serve"]) == 2
    line = one_error_line(capsys)
    assert f"error: {var}: " in line
    assert words in line


def test_flag_wins_over_a_bad_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The variable is bad but the flag replaces it: the error is about the port only.
    monkeypatch.setenv("METRICS_RING_CAPACITY", "abc")
    assert main(["serve", "--capacity", "5", "--port", "-1"]) == 2
    assert "error: --port: " in one_error_line(capsys)


def test_unwritable_sink_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["serve", "--jsonl", str(blocker / "m.jsonl")]) == 2
    line = one_error_line(capsys)
    assert "error: --jsonl: " in line
    assert f"{blocker} is a file, not a folder" in line


def test_unwritable_sink_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("METRICS_JSONL", str(tmp_path))  # a folder, not a file
    assert main(["serve"]) == 2
    line = one_error_line(capsys)
    assert "error: METRICS_JSONL: " in line
    assert str(tmp_path) in line


def test_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    line = one_error_line(capsys)
    assert f"error: --port: cannot listen on 127.0.0.1:{port}" in line


def test_host_that_is_not_ours(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_HOST", "192.0.2.1")  # TEST-NET-1: never local
    assert main(["serve", "--port", str(free_port())]) == 2
    assert "error: METRICS_HOST: cannot listen on 192.0.2.1" in one_error_line(capsys)


def test_config_error_in_a_real_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICS_")}
    env["METRICS_RING_CAPACITY"] = "0"
    env["METRICS_JSONL"] = str(tmp_path / "m.jsonl")
    result = subprocess.run(
        [sys.executable, "-m", "metrics_service", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "metrics-service: error: METRICS_RING_CAPACITY: "
        "must be between 1 and 10,000,000, got 0"
    ]


def test_console_script_reports_bad_flag(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("metrics-service")
    assert script.exists()
    result = subprocess.run(
        [str(script), "serve", "--capacity", "abc", "--jsonl", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "metrics-service: error: --capacity: expected an integer, got 'abc'"
    ]


def test_python_m_serve_answers(tmp_path: Path) -> None:
    """`python -m metrics_service serve` starts a real server (MetricsServer runs it)."""
    sink = tmp_path / "new" / "folder" / "m.jsonl"
    with MetricsServer(sink, env={"METRICS_RING_CAPACITY": "7"}) as server:
        health = server.client.health()
        assert health["ring_capacity"] == 7
        assert health["sink_path"] == str(sink)
        assert health["sink_exists"] is True
        body = server.client.post({"visitor_id": "visitor-1", "event": "page_view"})
        assert body["seq"] == 1
    assert sink.read_bytes().count(b"\n") == 1


def test_flags_reach_the_server(tmp_path: Path) -> None:
    """Flags beat the variables, even bad ones, in a real `serve` process."""
    sink = tmp_path / "flag.jsonl"
    server = MetricsServer(
        sink,
        env={"METRICS_PORT": "1", "METRICS_RING_CAPACITY": "abc"},
        args=["--capacity", "3"],
        settings_as="flags",  # --host, --port, --jsonl (METRICS_JSONL is set too)
    )
    with server:
        health = server.client.health()
        assert health["ring_capacity"] == 3
        assert health["sink_path"] == str(sink)
    server.stop(expect=CLEAN_EXIT)


def test_export_is_a_command_and_needs_its_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "export" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["export", "data/metrics.jsonl"])
    assert exited.value.code == 2
    assert "the following arguments are required: --parquet" in capsys.readouterr().err


def test_export_help_says_how_to_install_duckdb(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # as argparse wrapped it
    assert "pip install 'metrics-service[parquet]'" in out
