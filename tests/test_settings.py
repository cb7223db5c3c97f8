from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from metrics_service.cli import SERVE_FLAGS, main, serve_epilog
from metrics_service.settings import (
    BY_NAME,
    ENV_PREFIX,
    PURE_PYTHON_VAR,
    SETTINGS,
    Bounds,
    Config,
    ConfigError,
    unknown_variables,
)


def test_defaults() -> None:
    config = Config.from_env({})
    assert config.host == "127.0.0.1"
    assert config.port == 8001
    assert config.ring_capacity == 500
    assert config.jsonl == Path("data/metrics.jsonl")
    assert config.max_body_bytes == 1024 * 1024


def test_reads_environment() -> None:
    config = Config.from_env(
        {
            "METRICS_HOST": " 0.0.0.0 ",
            "METRICS_PORT": "9000",
            "METRICS_RING_CAPACITY": "10_000",
            "METRICS_JSONL": "/tmp/x/events.jsonl",
            "OTHER": "ignored",
        }
    )
    assert config.host == "0.0.0.0"
    assert config.port == 9000
    assert config.ring_capacity == 10_000
    assert config.jsonl == Path("/tmp/x/events.jsonl")


def test_overrides_win_over_environment() -> None:
    config = Config.from_env(
        {"METRICS_RING_CAPACITY": "7", "METRICS_PORT": "9000"},
        ring_capacity=3,
        port=None,  # a flag that was not given
    )
    assert config.ring_capacity == 3
    assert config.port == 9000


@pytest.mark.parametrize("value", ["1", "10000000"])
def test_capacity_bounds_accepted(value: str) -> None:
    config = Config.from_env({"METRICS_RING_CAPACITY": value})
    assert config.ring_capacity == int(value)


@pytest.mark.parametrize(
    ("env", "name", "message"),
    [
        ({"METRICS_RING_CAPACITY": "0"}, "METRICS_RING_CAPACITY", "got 0"),
        ({"METRICS_RING_CAPACITY": "-5"}, "METRICS_RING_CAPACITY", "got -5"),
        ({"METRICS_RING_CAPACITY": "10000001"}, "METRICS_RING_CAPACITY", "10,000,000"),
        ({"METRICS_RING_CAPACITY": "abc"}, "METRICS_RING_CAPACITY", "'abc'"),
        ({"METRICS_RING_CAPACITY": ""}, "METRICS_RING_CAPACITY", "integer"),
        ({"METRICS_RING_CAPACITY": "1.5"}, "METRICS_RING_CAPACITY", "'1.5'"),
        ({"METRICS_PORT": "http"}, "METRICS_PORT", "'http'"),
        ({"METRICS_PORT": "65536"}, "METRICS_PORT", "65536"),
        ({"METRICS_PORT": "-1"}, "METRICS_PORT", "-1"),
    ],
)
def test_bad_values_name_the_variable(
    env: dict[str, str], name: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    assert info.value.name == name
    assert message in info.value.message
    assert str(info.value).startswith(f"{name}: ")


def test_bad_override_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({}, ring_capacity=0)
    assert info.value.name == "METRICS_RING_CAPACITY"


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


# -- one declaration per setting -------------------------------------------------------

PUBLIC_NAMES = [  # variables and flags people have in their scripts: never renamed
    ("METRICS_HOST", "--host"),
    ("METRICS_PORT", "--port"),
    ("METRICS_RING_CAPACITY", "--capacity"),
    ("METRICS_JSONL", "--jsonl"),
    ("METRICS_INSTANCE", None),
    ("METRICS_REJECT_CAPACITY", None),
    ("METRICS_REJECT_JSONL", None),
    ("METRICS_MAX_BATCH", None),
    ("METRICS_MAX_BODY_BYTES", None),
    ("METRICS_MAX_EVENT_BYTES", None),
    ("METRICS_CORS_ORIGINS", None),
    ("METRICS_DEDUPE_WINDOW", None),
    ("METRICS_ALLOWED_EVENTS", None),
    ("METRICS_TAXONOMY", None),
    ("METRICS_SAMPLE", None),
    ("METRICS_REDACT_KEYS", None),
    ("METRICS_FSYNC", None),
    ("METRICS_FSYNC_INTERVAL", None),
    ("METRICS_REPLAY", None),
    ("METRICS_ROTATE_BYTES", None),
    ("METRICS_ROTATE_KEEP", None),
    ("METRICS_INGEST_TOKEN", None),
    ("METRICS_READ_TOKEN", None),
    ("METRICS_BODY_TIMEOUT", None),
    ("METRICS_MAX_WAITERS", None),
]


def test_every_field_is_a_declared_setting() -> None:
    fields = [f.name for f in dataclasses.fields(Config)]
    assert [s.name for s in SETTINGS] == fields
    assert sorted((s.var, s.flag) for s in SETTINGS) == sorted(PUBLIC_NAMES)
    assert SERVE_FLAGS == {"--host": "host", "--port": "port", "--jsonl": "jsonl"} | {
        "--capacity": "ring_capacity"
    }


def test_declared_defaults_are_configs_defaults() -> None:
    config = Config()
    for each in SETTINGS:
        assert getattr(config, each.name) == each.default, each.name
    assert Config.from_env({}) == config


def test_every_setting_is_read_from_its_variable() -> None:
    env = {
        "METRICS_HOST": "0.0.0.0",
        "METRICS_PORT": "9000",
        "METRICS_RING_CAPACITY": "7",
        "METRICS_JSONL": "/tmp/e.jsonl",
        "METRICS_INSTANCE": "web-2",
        "METRICS_REJECT_CAPACITY": "8",
        "METRICS_REJECT_JSONL": "/tmp/r.jsonl",
        "METRICS_MAX_BATCH": "5",
        "METRICS_MAX_BODY_BYTES": "6",
        "METRICS_MAX_EVENT_BYTES": "4",
        "METRICS_CORS_ORIGINS": "https://a.example, https://b.example",
        "METRICS_DEDUPE_WINDOW": "0",
        "METRICS_ALLOWED_EVENTS": "signup,page_view",
        "METRICS_TAXONOMY": "tax.json",
        "METRICS_SAMPLE": "scroll=0.5",
        "METRICS_REDACT_KEYS": "Email",
        "METRICS_FSYNC": "Always",
        "METRICS_FSYNC_INTERVAL": "0.25",
        "METRICS_REPLAY": "off",
        "METRICS_ROTATE_BYTES": "1_000",
        "METRICS_ROTATE_KEEP": "0",
        "METRICS_INGEST_TOKEN": "in",
        "METRICS_READ_TOKEN": "out",
        "METRICS_BODY_TIMEOUT": "2.5",
        "METRICS_MAX_WAITERS": "3",
    }
    assert set(env) == {s.var for s in SETTINGS}
    assert Config.from_env(env) == Config(
        host="0.0.0.0",
        port=9000,
        ring_capacity=7,
        jsonl=Path("/tmp/e.jsonl"),
        instance="web-2",
        reject_capacity=8,
        reject_jsonl=Path("/tmp/r.jsonl"),
        max_batch=5,
        max_body_bytes=6,
        max_event_bytes=4,
        cors_origins=("https://a.example", "https://b.example"),
        dedupe_window=0,
        allowed_events=frozenset({"signup", "page_view"}),
        taxonomy=Path("tax.json"),
        sample={"scroll": 0.5},
        redact_keys=frozenset({"email"}),
        fsync="always",
        fsync_interval=0.25,
        replay=False,
        rotate_bytes=1000,
        rotate_keep=0,
        ingest_token="in",
        read_token="out",
        body_timeout=2.5,
        max_waiters=3,
    )


@pytest.mark.parametrize(
    ("env", "error"),
    [
        # The texts ConfigError gave before the settings were declared in one place.
        ({"METRICS_RING_CAPACITY": "0"}, "must be between 1 and 10,000,000, got 0"),
        (
            {"METRICS_RING_CAPACITY": "10000001"},
            "must be between 1 and 10,000,000, got 10000001",
        ),
        ({"METRICS_RING_CAPACITY": ""}, "expected an integer, got ''"),
        ({"METRICS_PORT": "65536"}, "must be 0..65535, got 65536"),
        ({"METRICS_PORT": "-1"}, "must be 0..65535, got -1"),
        ({"METRICS_MAX_BATCH": "0"}, "must be at least 1"),
        ({"METRICS_MAX_BODY_BYTES": "0"}, "must be at least 1"),
        ({"METRICS_MAX_EVENT_BYTES": "-3"}, "must be at least 1"),
        ({"METRICS_DEDUPE_WINDOW": "-1"}, "must not be negative"),
        ({"METRICS_ROTATE_BYTES": "-1"}, "must not be negative"),
        ({"METRICS_ROTATE_KEEP": "-1"}, "must not be negative"),
        (
            {"METRICS_FSYNC": "Sometimes"},
            "must be never, interval or always, got 'sometimes'",
        ),
        ({"METRICS_FSYNC_INTERVAL": "0"}, "must be greater than 0"),
        ({"METRICS_FSYNC_INTERVAL": "x"}, "expected a number, got 'x'"),
        ({"METRICS_BODY_TIMEOUT": "-1"}, "must be greater than 0"),
        ({"METRICS_SAMPLE": "a=1.5"}, "rate for 'a' must be in 0..1, got 1.5"),
        ({"METRICS_SAMPLE": "a=-0.1"}, "rate for 'a' must be in 0..1, got -0.1"),
        ({"METRICS_SAMPLE": "a"}, "expected event=rate pairs, got 'a'"),
        ({"METRICS_SAMPLE": "a=x"}, "expected a number, got 'x'"),
        ({"METRICS_REPLAY": "maybe"}, "expected true or false, got 'maybe'"),
    ],
)
def test_violated_bounds_keep_their_messages(env: dict[str, str], error: str) -> None:
    [var] = env
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    assert str(info.value) == f"{var}: {error}"


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"port": 70000}, "METRICS_PORT: must be 0..65535, got 70000"),
        ({"fsync": "x"}, "METRICS_FSYNC: must be never, interval or always, got 'x'"),
        ({"sample": {"a": 2}}, "METRICS_SAMPLE: rate for 'a' must be in 0..1, got 2"),
        ({"body_timeout": 0.0}, "METRICS_BODY_TIMEOUT: must be greater than 0"),
    ],
)
def test_overrides_are_checked_by_the_same_bounds(
    overrides: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({}, **overrides)
    assert str(info.value) == error


def test_bounds_accept_their_edges() -> None:
    config = Config.from_env(
        {
            "METRICS_PORT": "0",
            "METRICS_MAX_BATCH": "1",
            "METRICS_DEDUPE_WINDOW": "0",
            "METRICS_SAMPLE": "a=0,b=1",
            "METRICS_FSYNC_INTERVAL": "0.001",
        }
    )
    assert config.port == 0
    assert config.sample == {"a": 0.0, "b": 1.0}


def test_bounds_wording() -> None:
    assert Bounds(min=0, max=9).problem(10) == "must be 0..9, got 10"
    assert Bounds(max=9).problem(10) == "must be at most 9"
    assert Bounds(min=2).problem(1) == "must be at least 2"
    assert Bounds(choices=("a",)).problem("b") == "must be a, got 'b'"
    assert Bounds(min=0, max=9).problem(9) is None
    assert Bounds(min=1, max=10_000_000).describe() == "between 1 and 10,000,000"
    assert BY_NAME["port"].description() == "port (0..65535)"


# -- serve --help ----------------------------------------------------------------------


def serve_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    return " ".join(out.split())  # as one line: wrapping depends on the terminal


def test_serve_help_lists_every_setting_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = serve_help(capsys)
    for each in SETTINGS:
        assert each.var in text
        assert f"default: {each.shown_default()}" in text
        assert " ".join(each.description().split()) in text
        if each.flag:
            assert f"{each.flag} {each.dest.upper()} {each.description()}" in text
    assert "--capacity CAPACITY events kept in memory" in text
    assert "[METRICS_RING_CAPACITY; default: 500]" in text
    assert "METRICS_MAX_BATCH events per batch (at least 1) [default: 1000]" in text
    assert PURE_PYTHON_VAR in text


def test_env_only_settings_are_in_the_epilog_flagged_ones_are_not() -> None:
    epilog = serve_epilog(width=200)
    listed = [line.split()[0] for line in epilog.splitlines() if line[:3] == "  M"]
    assert listed == [s.var for s in SETTINGS if not s.flag] + [PURE_PYTHON_VAR]


def test_serve_epilog_wraps_but_keeps_defaults_whole() -> None:
    for line in serve_epilog(width=60).splitlines():
        assert len(line) <= 60 or "[default:" in line, line
        assert not line.rstrip().endswith("[default:")


# -- unknown METRICS_* variables -------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


def test_unknown_variable_names_the_closest_setting() -> None:
    assert unknown_variables({"METRICS_PROT": "9000"}) == [
        "unknown setting METRICS_PROT (did you mean METRICS_PORT?)"
    ]
    assert unknown_variables({"METRICS_RING_CAPCITY": "5", "HOME": "/"}) == [
        "unknown setting METRICS_RING_CAPCITY (did you mean METRICS_RING_CAPACITY?)"
    ]
    assert unknown_variables({"METRICS_PURE_PYTON": "1"}) == [
        "unknown setting METRICS_PURE_PYTON (did you mean METRICS_PURE_PYTHON?)"
    ]
    # Nothing close: no guess (the shared prefix alone does not make names close).
    assert unknown_variables({"METRICS_FOO": "1"}) == ["unknown setting METRICS_FOO"]


def test_known_variables_are_not_unknown() -> None:
    env = {s.var: "x" for s in SETTINGS}
    env |= {"METRICS_PURE_PYTHON": "1", "METRICS_E2E_CHROMIUM": "/usr/bin/chromium"}
    env |= {"METRICS_E2E_ANYTHING": "1", "OTHER_PROT": "1"}
    assert unknown_variables(env) == []


def test_pure_python_switch_is_the_one_native_reads() -> None:
    from metrics_service import _native

    assert _native.PURE_PYTHON_VAR == PURE_PYTHON_VAR


def test_serve_warns_once_about_an_unknown_variable(
    clean_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean_env.setenv("METRICS_PROT", "9000")
    clean_env.setenv("METRICS_PURE_PYTHON", "0")
    clean_env.setenv("METRICS_E2E_CHROMIUM", "/usr/bin/chromium")
    caplog.set_level(logging.WARNING, logger="metrics_service")
    # A bad flag stops start-up after the warning, before uvicorn.
    assert main(["serve", "--port", "abc"]) == 2
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "metrics_service" and r.levelno == logging.WARNING
    ]
    assert warnings == ["unknown setting METRICS_PROT (did you mean METRICS_PORT?)"]
    assert "error: --port: expected an integer, got 'abc'" in capsys.readouterr().err


def test_serve_does_not_warn_about_pure_python(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env.setenv("METRICS_PURE_PYTHON", "1")
    clean_env.setenv("METRICS_RING_CAPACITY", "0")
    caplog.set_level(logging.WARNING, logger="metrics_service")
    assert main(["serve"]) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_instance_is_a_short_name_or_unset() -> None:
    assert Config.from_env({"METRICS_INSTANCE": "web-1.eu"}).instance == "web-1.eu"
    assert Config.from_env({"METRICS_INSTANCE": " "}).instance is None
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"METRICS_INSTANCE": "web 1"})
    assert caught.value.name == "METRICS_INSTANCE"
    assert "letters, digits" in caught.value.message


def test_rejected_file_is_beside_the_sink_by_default() -> None:
    config = Config.from_env({"METRICS_JSONL": "/tmp/x/events.jsonl"})
    assert config.rejected_file == Path("/tmp/x/events.rejected.jsonl")


@pytest.mark.parametrize("raw", ["off", "OFF", " Off "])
def test_rejected_file_off(raw: str) -> None:
    config = Config.from_env({"METRICS_REJECT_JSONL": raw})
    assert config.reject_jsonl == "off"
    assert config.rejected_file is None


def test_rejected_file_moved_and_no_file_without_a_quarantine() -> None:
    moved = Config.from_env({"METRICS_REJECT_JSONL": "/var/log/refused.jsonl"})
    assert moved.rejected_file == Path("/var/log/refused.jsonl")
    off = Config.from_env({"METRICS_REJECT_CAPACITY": "0"})
    assert off.rejected_file is None


def test_reject_capacity_bounds() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"METRICS_REJECT_CAPACITY": "-1"})
    assert caught.value.name == "METRICS_REJECT_CAPACITY"
    assert "must be between 0 and 1,000,000" in caught.value.message
