"""README's configuration table is generated: `settings.markdown_table()`."""

from __future__ import annotations

from pathlib import Path

from metrics_service import settings

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_table(text: str) -> str:
    """The table that starts with markdown_table()'s header line, as written."""
    header = settings.markdown_table().splitlines()[0]
    lines = text.splitlines()
    assert lines.count(header) == 1, f"README needs one table headed {header!r}"
    start = lines.index(header)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[start:end]) + "\n"


def test_readme_configuration_table_is_the_generated_one() -> None:
    expected = settings.markdown_table()
    assert readme_table(README.read_text(encoding="utf-8")) == expected, (
        "README.md's configuration table differs from the settings declared in "
        "metrics_service/settings.py; replace it with:\n\n" + expected
    )


def test_readme_table_is_found_between_other_text() -> None:
    table = settings.markdown_table()
    assert readme_table(f"# x\n\nintro\n\n{table}\nafter\n| other | table |\n") == (
        table
    )


def test_every_setting_has_a_row() -> None:
    rows = settings.markdown_table().splitlines()[2:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == [
        s.var for s in settings.SETTINGS
    ]
    assert "| METRICS_RING_CAPACITY | --capacity | `500` |" in settings.markdown_table()
