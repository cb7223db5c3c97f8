from __future__ import annotations

from pathlib import Path

import pytest

from metrics_service.settings import Config, ConfigError


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
