"""The container files, checked without a Docker engine."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from metrics_service.testing import MetricsServer, free_port

ROOT = Path(__file__).resolve().parent.parent
HEALTH_PATH = "/api/metrics/behavior/health"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def instructions(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


def docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in instructions("ENV"):
        for pair in shlex.split(rest):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def service() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    [svc] = compose["services"].values()
    assert isinstance(svc, dict)
    return svc


def compose_env() -> dict[str, str]:
    env = service()["environment"]
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def sink_folder(env: dict[str, str]) -> str:
    return str(PurePosixPath(env["METRICS_JSONL"]).parent)


def test_data_folder_is_mounted_at_the_sink_folder() -> None:
    folder = sink_folder(compose_env())
    assert folder == sink_folder(docker_env())
    volumes = [str(v) for v in service()["volumes"]]
    assert f"./data:{folder}" in volumes
    assert (ROOT / "data" / ".gitkeep").exists()
    assert any(folder in rest for rest in instructions("VOLUME"))


def test_listens_on_all_interfaces_inside() -> None:
    assert docker_env()["METRICS_HOST"] == "0.0.0.0"
    assert compose_env().get("METRICS_HOST", "0.0.0.0") == "0.0.0.0"


def test_published_port_is_the_service_port() -> None:
    port = compose_env().get("METRICS_PORT", docker_env()["METRICS_PORT"])
    container_ports = [str(p).rsplit(":", 1)[-1] for p in service()["ports"]]
    assert port in container_ports
    assert port in instructions("EXPOSE")


def test_runs_as_a_non_root_user() -> None:
    [user] = instructions("USER")
    assert user.split(":")[0] not in ("root", "0")
    if "user" in service():
        # `${UID:-1000}` style defaults are what an unset variable gives.
        resolved = re.sub(r"\$\{\w+:-(\w+)\}", r"\1", str(service()["user"]))
        assert resolved.split(":")[0] not in ("root", "0", "")


def test_command_is_serve() -> None:
    [cmd] = instructions("CMD")
    assert "metrics-service" in cmd and "serve" in cmd


def test_copies_files_that_exist_and_stages_that_come_before() -> None:
    stages: list[str] = []
    for word, rest in dockerfile():
        if word == "FROM" and " AS " in rest.upper():
            stages.append(rest.split()[-1])
        if word != "COPY":
            continue
        args = shlex.split(rest)
        if args[0].startswith("--from="):
            assert args[0].removeprefix("--from=") in stages
            continue
        for source in args[:-1]:
            assert (ROOT / source).exists(), source


def test_the_image_is_built_with_the_c_extension_and_checks_it() -> None:
    build, final = (ROOT / "Dockerfile").read_text().rsplit("\nFROM ", 1)
    assert (
        "gcc" in build and "setup.py" in build
    )  # what compiling _native/_speedups.c needs
    assert "import metrics_service._native._speedups" in final


def healthchecks() -> list[list[str]]:
    """Both healthcheck commands as argv lists."""
    test = service()["healthcheck"]["test"]
    assert test[0] == "CMD", "exec form: no shell needed in a slim image"
    [docker] = instructions("HEALTHCHECK")
    exec_form = docker.split(" CMD ", 1)[1]
    return [list(test[1:]), yaml.safe_load(exec_form)]


def test_healthchecks_use_the_health_endpoint() -> None:
    port = docker_env()["METRICS_PORT"]
    for argv in healthchecks():
        joined = " ".join(argv)
        assert f"127.0.0.1:{port}{HEALTH_PATH}" in joined
    assert "interval" in service()["healthcheck"]


def test_healthchecks_pass_on_a_live_server_and_fail_on_none(tmp_path: Path) -> None:
    port = docker_env()["METRICS_PORT"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICS_")}

    def run(argv: list[str], to_port: int) -> int:
        argv = [a.replace(f":{port}/", f":{to_port}/") for a in argv]
        assert argv[0] == "python"
        return subprocess.run(
            [sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30
        ).returncode

    with MetricsServer(tmp_path / "m.jsonl") as server:
        for argv in healthchecks():
            assert run(argv, server.port) == 0
    closed = free_port()
    for argv in healthchecks():
        assert run(argv, closed) != 0
