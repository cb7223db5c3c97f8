"""deploy/vector.yaml and deploy/fluent-bit.yaml, parsed and held against the files
the collector really writes: its rotation code names the segments, its torn-tail
repair names the .torn file, and its writer produces the longest line."""

from __future__ import annotations

import fnmatch
import gzip
import os
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from conftest import EVENT_URL, event
from starlette.testclient import TestClient

from metrics_service import Config, create_app
from metrics_service.store import rotation
from metrics_service.store.rotation import segments
from metrics_service.store.tail import repair_torn_tail

# Independent of the C-or-Python choice: make test runs it in its first pass only.
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# The sink as docker-compose.yml places it; the shippers read that folder.
[SERVICE] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
    "services"
].values()
SINK = str(SERVICE["environment"]["METRICS_JSONL"])
FOLDER = str(Path(SINK).parent)


def vector() -> dict[str, Any]:
    config = yaml.safe_load((DEPLOY / "vector.yaml").read_text())
    assert isinstance(config, dict)
    return config


def fluent_bit() -> dict[str, Any]:
    config = yaml.safe_load((DEPLOY / "fluent-bit.yaml").read_text())
    assert isinstance(config, dict)
    return config


def tail_input() -> dict[str, Any]:
    [tail] = [i for i in fluent_bit()["pipeline"]["inputs"] if i["name"] == "tail"]
    assert isinstance(tail, dict)
    return tail


def fluent_output(name: str) -> dict[str, Any]:
    [out] = [o for o in fluent_bit()["pipeline"]["outputs"] if o["name"] == name]
    assert isinstance(out, dict)
    return out


def size(text: str | int) -> int:
    """Fluent Bit's sizes: 64k, 1M or a plain number of bytes."""
    match = re.fullmatch(r"(\d+)([kKmM]?)[bB]?", str(text))
    assert match, text
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024**2}[match[2].lower()]


class Shipper:
    """Which paths a shipper's include and exclude patterns pick up."""

    def __init__(self, include: list[str], exclude: list[str], folder: Path) -> None:
        self.include = [p.replace(FOLDER, str(folder)) for p in include]
        self.exclude = [p.replace(FOLDER, str(folder)) for p in exclude]

    def ships(self, path: Path) -> bool:
        name = str(path)
        return any(fnmatch.fnmatchcase(name, p) for p in self.include) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.exclude
        )


def vector_shipper(folder: Path) -> Shipper:
    source = vector()["sources"]["metrics_log"]
    return Shipper(source["include"], source["exclude"], folder)


def fluent_bit_shipper(folder: Path) -> Shipper:
    tail = tail_input()
    return Shipper(tail["path"].split(","), tail["exclude_path"].split(","), folder)


class Written:
    """Every kind of file the collector leaves in its folder, named by its own code."""

    def __init__(self, folder: Path) -> None:
        self.sink = folder / Path(SINK).name
        config = Config(jsonl=self.sink, rotate_bytes=1_000, rotate_keep=100)
        # Every name the rotation gives a file, as it gives it: the sink renamed to a
        # plain segment, then the segment's .gz written under a temporary name.
        renamed: list[tuple[Path, Path]] = []
        partials: list[Path] = []
        rename, replace = os.rename, os.replace

        def renaming(src: Any, dst: Any) -> None:
            renamed.append((Path(src), Path(dst)))
            rename(src, dst)

        def replacing(src: Any, dst: Any) -> None:
            partials.append(Path(src))
            replace(src, dst)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(rotation.os, "rename", renaming)
            patch.setattr(rotation.os, "replace", replacing)
            with TestClient(create_app(config)) as c:
                for _ in range(20):
                    assert c.post(EVENT_URL, json=event()).status_code == 202
                    refused = event(visitor_id="v")  # too short: quarantined
                    assert c.post(EVENT_URL, json=refused).status_code == 422
        self.gzipped = segments(self.sink)
        assert len(self.gzipped) >= 3
        assert all(p.suffix == ".gz" for p in self.gzipped)
        # The names segments had between their rename and their gzip.
        self.plain = [dst for src, dst in renamed if src == self.sink]
        assert [p.with_suffix(".jsonl.gz") for p in self.plain] == self.gzipped
        # compress() writes the .gz under a temporary name, then renames it.
        self.partial = next(p for p in partials if p.name.endswith(".partial"))

        with open(self.sink, "ab") as fh:
            fh.write(b'{"seq":99,"recei')  # what a crash mid-write leaves
        assert repair_torn_tail(self.sink) > 0
        [self.torn] = folder.glob("*.torn")

        # The quarantine's file beside the sink (its refused requests) and its segments.
        assert config.rejected_file is not None
        self.rejected = config.rejected_file
        self.rejected_gz = segments(self.rejected)
        assert self.rejected.exists() and len(self.rejected_gz) >= 2
        self.rejected_plain = [dst for src, dst in renamed if src == self.rejected]
        assert len(self.rejected_plain) == len(self.rejected_gz)

    def kept_out(self) -> list[Path]:
        return [
            self.partial,
            self.torn,
            self.rejected,
            *self.rejected_plain,
            *self.rejected_gz,
        ]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return Written(tmp_path_factory.mktemp("data"))


def test_the_shippers_watch_the_folder_and_sink_the_collector_writes() -> None:
    source = vector()["sources"]["metrics_log"]
    assert source["include"][0] == SINK
    assert tail_input()["path"].split(",")[0] == SINK
    patterns = [*source["include"], *source["exclude"], tail_input()["exclude_path"]]
    for pattern in patterns:
        assert all(p.startswith(FOLDER + "/") for p in pattern.split(","))


def test_vector_ships_the_sink_and_every_segment_and_nothing_else(
    written: Written,
) -> None:
    shipper = vector_shipper(written.sink.parent)
    for path in [written.sink, *written.plain, *written.gzipped]:
        assert shipper.ships(path), path.name
    for path in written.kept_out():
        assert not shipper.ships(path), path.name


def test_fluent_bit_ships_the_sink_and_plain_segments_and_nothing_else(
    written: Written,
) -> None:
    shipper = fluent_bit_shipper(written.sink.parent)
    for path in [written.sink, *written.plain]:
        assert shipper.ships(path), path.name
    # Its tail input cannot read gzip: gzipped segments are for ClickHouse's load.
    for path in [*written.kept_out(), *written.gzipped]:
        assert not shipper.ships(path), path.name


def test_the_patterns_match_the_files_in_the_folder(written: Written) -> None:
    """Against the folder's real listing, not just names built here."""
    folder = written.sink.parent
    present = sorted(p for p in folder.iterdir() if p.is_file())
    shipper = vector_shipper(folder)
    shipped = {p.name for p in present if shipper.ships(p)}
    assert shipped == {written.sink.name} | {p.name for p in written.gzipped}
    assert written.torn.name in {p.name for p in present}


def longest_line(folder: Path) -> int:
    """The longest line the collector writes at METRICS_MAX_EVENT_BYTES's default:
    the largest event it accepts, made of the characters the stored line widens most,
    with every key the collector adds at its widest."""
    config = Config(jsonl=folder / "m.jsonl", instance="i" * 64)
    # The limit counts the event as orjson writes it, U+0085 as its 2 UTF-8 bytes;
    # the stored line escapes it (\u0085, 6 bytes), as it does the header's user
    # agent (cut to 512 characters). A test tag is 256 characters, here 4 bytes each.
    headers = {"User-Agent": b"\x85" * 600}
    url = EVENT_URL + "?test_id=" + "%F0%9F%8E%89" * 256

    def body(pad: int) -> dict[str, Any]:
        return event(
            visitor_id="v" * 64, event_id="e" * 100, metadata={"pad": "\x85" * pad}
        )

    # Just over the limit, then a character less at a time.
    pad = (config.max_event_bytes - len(orjson.dumps(body(0)))) // 2 + 2
    refused = 0
    with TestClient(create_app(config)) as c:
        while pad > 0:
            answer = c.post(url, json=body(pad), headers=headers)
            if answer.status_code == 202:
                break
            assert answer.status_code == 422, answer.text
            refused += 1
            pad -= 1
    assert refused  # the first event was over the limit: this one is the largest
    lines = config.jsonl.read_bytes().splitlines()
    assert len(lines) == 1
    stored = orjson.loads(lines[0])
    assert len(stored["metadata"]["pad"]) * 2 > config.max_event_bytes - 400
    assert len(stored["user_agent"]) == 512 and len(stored["test_id"]) == 256
    return len(lines[0]) + 1


def test_line_limits_are_above_the_longest_line(tmp_path: Path) -> None:
    longest = longest_line(tmp_path)
    # Three times the limit: a line limit of twice METRICS_MAX_EVENT_BYTES would cut
    # it, and Fluent Bit would stop the file at it without skip_long_lines.
    assert longest > 3 * Config().max_event_bytes
    assert vector()["sources"]["metrics_log"]["max_line_bytes"] > longest
    tail = tail_input()
    assert size(tail["buffer_max_size"]) > longest
    assert size(tail["buffer_chunk_size"]) <= size(tail["buffer_max_size"])
    # A longer line (METRICS_MAX_EVENT_BYTES raised, the shipper not) is skipped and
    # logged rather than ending the file's shipping.
    assert tail["skip_long_lines"] is True


def test_checkpoints_are_kept_across_restarts() -> None:
    config = vector()
    assert config["data_dir"].startswith("/var/lib/")
    source = config["sources"]["metrics_log"]
    assert source["read_from"] == "beginning"
    assert source["oldest_first"] is True
    # Acknowledged by every sink before the checkpoint moves; Vector ignores the
    # deprecated source-level setting, so it is not relied on.
    assert config["acknowledgements"]["enabled"] is True
    assert "acknowledgements" not in source
    for sink in config["sinks"].values():
        assert sink["acknowledgements"]["enabled"] is True
    tail = tail_input()
    assert tail["db"].startswith("/var/lib/") and tail["read_from_head"] is True
    # New files are found within seconds, as Vector's (every second) are.
    assert tail["refresh_interval"] <= 5 and tail["rotate_wait"] >= 5
    assert tail["storage.type"] == "filesystem"
    assert fluent_bit()["service"]["storage.path"].startswith("/var/lib/")


def test_kafka_messages_are_keyed_by_visitor() -> None:
    kafka = vector()["sinks"]["kafka"]
    assert kafka["key_field"] == "visitor_id"
    # The message is the line as stored; the key is taken from it.
    assert kafka["encoding"]["codec"] == "text"
    [keyed] = kafka["inputs"]
    assert ".visitor_id = " in vector()["transforms"][keyed]["source"]
    assert kafka["librdkafka_options"]["enable.idempotence"] == "true"
    assert fluent_output("kafka")["message_key_field"] == "visitor_id"
    assert fluent_output("kafka")["rdkafka.enable.idempotence"] is True


def test_clickhouse_sinks_insert_into_the_documented_table() -> None:
    sql = (DEPLOY / "clickhouse.sql").read_text()
    assert "CREATE TABLE IF NOT EXISTS metrics.events" in sql
    sink = vector()["sinks"]["clickhouse"]
    assert (sink["database"], sink["table"]) == ("metrics", "events")
    assert sink["format"] == "json_each_row" and sink["date_time_best_effort"] is True
    transform = vector()["transforms"][sink["inputs"][0]]
    assert "encode_json(.metadata)" in transform["source"]
    uri = fluent_output("http")["uri"]
    assert "INSERT%20INTO%20metrics.events%20FORMAT%20JSONEachRow" in uri
    assert "date_time_input_format=best_effort" in uri


def test_both_warn_about_a_shipper_down_across_rotation_and_gzip() -> None:
    for name in ("vector.yaml", "fluent-bit.yaml"):
        lines = (DEPLOY / name).read_text().splitlines()
        comments = " ".join(line.lstrip("# ") for line in lines if line.startswith("#"))
        assert "miss the rest of that segment" in comments.replace("misses", "miss")
        assert "METRICS_ROTATE_KEEP" in comments and "never 0" in comments, name


def test_a_segment_name_is_what_the_rotation_code_makes(written: Written) -> None:
    """The patterns assume `<stem>-<time>-<seq>.jsonl[.gz]`; so does segment_pattern."""
    pattern = rotation.segment_pattern(written.sink)
    for path in [*written.plain, *written.gzipped]:
        assert pattern.match(path.name), path.name
    first = orjson.loads(
        gzip.decompress(written.gzipped[0].read_bytes()).splitlines()[0]
    )
    assert written.gzipped[0].name.endswith(f"-{first['seq']}.jsonl.gz")
