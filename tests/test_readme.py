"""Every `sh` block of README.md, run against a real service (the rules are in README's
Quick start; README.md is read when the tests are collected, so new blocks are checked too).

- Each section (heading) with `sh` blocks gets an empty folder and a fresh service
  (MetricsServer) whose sink is `data/metrics.jsonl` in that folder, the path README shows;
  the folder has a `.venv` link to this interpreter's environment, so `.venv/bin/...` works.
- The blocks of a section run in order, one command at a time (a command is as many lines
  as `bash -n` needs), with `bash -o pipefail`; `127.0.0.1:8001` and `localhost:8001` are
  replaced by the service's address.
- A command fails on a non-zero exit. `# {...}` / `# [...]` comment lines right after a
  command are its expected JSON output: same keys, same values, apart from the times and
  the user agent (only their type is compared).
- A command commented `# until Ctrl-C` must still be running after a second; it then gets
  SIGINT, as from Ctrl-C.
- A block whose first line is `# the service started as: VAR=value ... make run` gets
  its section's service restarted (same folder) with those variables; the blocks after
  it keep that service, as a reader following the section would.
- `<!-- readme-test: skip, reason -->` right before a block leaves it out; other languages
  (json, python, console, html, none) are never run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from metrics_service.testing import MetricsServer

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip,\s*(.+?)\s*-->")
STARTED_AS = re.compile(r"^#\s*the service started as:\s*(.*)$")
UNTIL_CTRL_C = "# until Ctrl-C"
ADDRESSES = ("127.0.0.1:8001", "localhost:8001")
# Keys whose value depends on when and how the command ran: only the type is compared.
VOLATILE = {"received_at", "timestamp", "user_agent"}


@dataclass
class Command:
    line: int
    text: str
    expect: str | None = None


@dataclass
class Block:
    section: str
    line: int
    lang: str
    text: str
    skip: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def commands(self) -> list[Command]:
        out: list[Command] = []
        pending: list[str] = []
        start = 0
        expecting = False
        for number, line in enumerate(self.text.splitlines(), self.line + 1):
            stripped = line.strip()
            if not pending:
                if stripped.startswith("# {") or stripped.startswith("# ["):
                    assert out and (expecting or out[-1].expect is None), (
                        f"README.md:{number}: an expected output with no command above"
                    )
                    text = stripped[2:]
                    last = out[-1]
                    last.expect = text if last.expect is None else last.expect + text
                    expecting = True
                    continue
                if expecting and stripped.startswith("#") and not _json(out[-1].expect):
                    out[-1].expect = f"{out[-1].expect}{stripped[1:].strip()}"
                    continue
                expecting = False
                if not stripped or stripped.startswith("#"):
                    continue
                start = number
            pending.append(line)
            joined = "\n".join(pending)
            if not joined.endswith("\\") and _complete(joined):
                out.append(Command(start, joined))
                pending = []
        assert not pending, f"README.md:{start}: an unfinished command"
        return out


def _json(text: str | None) -> bool:
    try:
        json.loads(text or "")
    except ValueError:
        return False
    return True


def _complete(script: str) -> bool:
    check = subprocess.run(["bash", "-n", "-c", script], capture_output=True)
    return check.returncode == 0


def read_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    section = "top"
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("```"):
            lang = line[3:].strip()
            end = index + 1
            while not lines[end].startswith("```"):
                end += 1
            body = "\n".join(lines[index + 1 : end])
            before = next(
                (lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), ""
            )
            skip = SKIP.search(before)
            block = Block(
                section, index + 1, lang, body, skip.group(1) if skip else None
            )
            first = body.splitlines()[0] if body else ""
            started = STARTED_AS.match(first.strip())
            if started:
                words = shlex.split(started.group(1))
                block.env = dict(w.split("=", 1) for w in words if "=" in w)
            blocks.append(block)
            index = end + 1
            continue
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        index += 1
    return blocks


def sections() -> dict[str, list[Block]]:
    found: dict[str, list[Block]] = {}
    for block in read_blocks(README.read_text()):
        if block.lang == "sh" and block.skip is None:
            found.setdefault(block.section, []).append(block)
    return found


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


SECTIONS = sections()


def matches(expected: Any, actual: Any, key: str | None = None) -> bool:
    if key in VOLATILE:
        return type(expected) is type(actual)
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(matches(v, actual[k], k) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return type(expected) is type(actual) and expected == actual


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Section:
    """One section's folder, its service, and the commands run against it."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.server: MetricsServer | None = None
        self.server_env: dict[str, str] | None = None
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("METRICS_") or k == "METRICS_PURE_PYTHON"
        }

    def serve(self, env: dict[str, str]) -> MetricsServer:
        if self.server is not None and (not env or self.server_env == env):
            return self.server
        if self.server is not None:
            self.server.stop()
        self.server = MetricsServer(
            Path("data/metrics.jsonl"),
            cwd=self.work,
            env=env,
            log=self.work.parent / f"server-{time.monotonic_ns()}.log",
        ).start()
        self.server_env = env
        return self.server

    def run(self, block: Block, command: Command) -> None:
        server = self.serve(block.env)
        script = command.text
        for address in ADDRESSES:
            script = script.replace(address, f"127.0.0.1:{server.port}")
        where = f"README.md:{command.line} ({block.section!r})"
        argv = ["bash", "-o", "pipefail", "-c", script]
        if UNTIL_CTRL_C in command.text:
            proc = subprocess.Popen(
                argv,
                cwd=self.work,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                # A shell started in the background (`make test &`) ignores SIGINT,
                # and so would the command; Ctrl-C in a terminal reaches it.
                preexec_fn=_default_sigint,
            )
            time.sleep(1)
            running = proc.poll() is None
            if running:
                os.killpg(proc.pid, signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # leave nothing running
                proc.communicate()
                raise
            assert running or proc.returncode == 0, self._failure(
                where, script, proc.returncode, out, err
            )
            return
        result = subprocess.run(
            argv, cwd=self.work, env=self.env, capture_output=True, timeout=20
        )
        assert result.returncode == 0, self._failure(
            where, script, result.returncode, result.stdout, result.stderr
        )
        if command.expect is not None:
            expected = json.loads(command.expect)
            try:
                actual = json.loads(result.stdout)
            except ValueError:
                actual = result.stdout.decode(errors="replace")
            assert matches(expected, actual), (
                f"{where}: {script}\nprinted {result.stdout.decode()!r}\n"
                f"README says {command.expect}"
            )

    def _failure(
        self, where: str, script: str, code: int, out: bytes, err: bytes
    ) -> str:
        server = self.server.output() if self.server else ""
        return (
            f"{where}: exit code {code}\n$ {script}\nstdout: {out.decode()}\n"
            f"stderr: {err.decode()}\nservice output:\n{server}"
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.mark.slow  # a service and a process per command
@pytest.mark.parametrize("name", list(SECTIONS), ids=[_slug(n) for n in SECTIONS])
def test_readme_section_runs(name: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(sys.prefix)
    section = Section(work)
    try:
        for block in SECTIONS[name]:
            for command in block.commands():
                section.run(block, command)
    finally:
        section.close()


def test_blocks_are_found_and_skips_give_a_reason() -> None:
    blocks = read_blocks(README.read_text())
    shell = [b for b in blocks if b.lang == "sh"]
    run = [b for b in shell if b.skip is None]
    assert len(run) >= 8, "README.md's sh blocks were not found"
    for block in shell:
        if block.skip is not None:
            assert block.skip.strip(), f"README.md:{block.line}: a skip needs a reason"
    # Every expectation is JSON, so a typo never silently checks nothing.
    for block in run:
        for command in block.commands():
            if command.expect is not None:
                json.loads(command.expect)


def test_readme_names_the_stored_keys_in_order() -> None:
    from metrics_service.store.line import KEYS

    text = README.read_text()
    sentence = text[text.index("with its keys in this order:") :].split(". ")[0]
    named = [name for name in re.findall(r"`([a-z_]+)`", sentence) if name != "null"]
    assert tuple(named) == KEYS


def test_commands_are_split_as_bash_reads_them() -> None:
    block = Block(
        "x",
        1,
        "sh",
        "# a comment\nfor i in 1 2; do\n  echo $i\ndone\n"
        'echo \'{"a": 1}\' \\\n  | cat\n# {"a":\n# 1}\ncurl -N x   # until Ctrl-C\n',
    )
    commands = block.commands()
    assert [c.line for c in commands] == [3, 6, 10]
    assert commands[1].expect == '{"a":1}'
    assert commands[0].expect is None
    assert matches({"a": 1, "timestamp": "x"}, {"a": 1, "timestamp": "y"})
    assert not matches({"a": 1}, {"a": 1, "b": 2})
