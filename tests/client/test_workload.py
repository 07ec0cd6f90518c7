from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from client.errors import WorkloadError
from client.workload import detect_format, generate_workload, load_workload


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_plain_text_skips_blank_lines_and_comments(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "default.workload",
        "# a comment\nsleep 0\n\n   \n  # indented comment\n  sleep 1  \necho '#not a comment'\n",
    )
    assert load_workload(path) == [
        {"cmd": "sleep 0"},
        {"cmd": "sleep 1"},
        {"cmd": "echo '#not a comment'"},
    ]


def test_plain_text_handles_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    path = write(tmp_path, "w.txt", "sleep 0\r\nsleep 2")
    assert load_workload(path) == [{"cmd": "sleep 0"}, {"cmd": "sleep 2"}]


def test_jsonl_tasks_are_returned_as_written(tmp_path: Path) -> None:
    tasks = [
        {"cmd": "sleep 0"},
        {"fn": "add", "args": [1, 2], "kwargs": {"x": "y"}},
        {"cmd": "true", "id": "t-3", "priority": 5, "timeout_s": 1.5, "user": "bob"},
        {"fn": "HELLO", "kwargs": {"firstName": "John"}, "max_attempts": 3},
    ]
    text = "\n".join(json.dumps(t) for t in tasks[:2]) + "\n\n# c\n"
    text += "\n".join(json.dumps(t) for t in tasks[2:]) + "\n"
    path = write(tmp_path, "w.jsonl", text)
    assert load_workload(path) == tasks


def test_format_flag_overrides_the_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, "w.txt", '{"cmd": "sleep 0"}\n')
    assert load_workload(path, "jsonl") == [{"cmd": "sleep 0"}]
    assert load_workload(path) == [{"cmd": '{"cmd": "sleep 0"}'}]
    assert detect_format("x.JSONL") == "jsonl"
    assert detect_format("x.ndjson") == "jsonl"
    assert detect_format("x.workload") == "text"
    assert detect_format("x.jsonl", "text") == "text"
    with pytest.raises(ValueError, match="unknown workload format"):
        detect_format("x", "yaml")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"cmd": "sleep 0", "priority": "high"}', "priority must be an integer, got str"),
        ('{"cmd": "sleep 0", "colour": "red"}', "the task has unknown field(s): colour"),
        ('{"args": [1]}', "the task needs a cmd (shell task) or an fn (call task)"),
        ('{"cmd": "a", "fn": "b"}', "the task has both cmd and fn"),
        ('{"fn": "f", "args": {"a": 1}}', "args must be an array"),
        ('{"cmd": "sleep 0", "timeout_s": -1}', "timeout_s must be positive"),
        ('{"cmd": "sleep 0"', "not valid JSON"),
        ('["sleep 0"]', "expected a JSON object, got list"),
    ],
)
def test_broken_jsonl_line_reports_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    good = '{"cmd": "sleep 0"}\n'
    path = write(tmp_path, "bad.jsonl", good + "\n# comment\n" + good + line + "\n" + good)
    with pytest.raises(WorkloadError) as info:
        load_workload(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 5: ")
    assert expected in message
    assert "tasks[" not in message
    assert info.value.line == 5
    assert info.value.path == str(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "missing.workload"
    with pytest.raises(WorkloadError, match="no such workload file") as info:
        load_workload(path)
    assert str(path) in str(info.value)


def test_a_directory_is_not_a_workload(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="cannot read") as info:
        load_workload(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_non_utf8_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "w.txt"
    path.write_bytes(b"sleep 0\n\xff\xfe\n")
    with pytest.raises(WorkloadError, match="not UTF-8"):
        load_workload(path)


def test_dash_reads_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("sleep 0\n#x\nsleep 1\n"))
    assert load_workload("-") == [{"cmd": "sleep 0"}, {"cmd": "sleep 1"}]


@pytest.mark.parametrize(
    ("sleep_ms", "line"),
    [
        (10, "sleep 0.01"),
        (0, "sleep 0"),
        (1000, "sleep 1"),
        (1500, "sleep 1.5"),
        (100000, "sleep 100"),
        (1, "sleep 0.001"),
        (3, "sleep 0.003"),  # 3 / 1000 in floats is 0.003000...0001-prone; not here
        ("0.5", "sleep 0.0005"),
        (10.0, "sleep 0.01"),
    ],
)
def test_generate_workload_formats_seconds_exactly(sleep_ms: int | float | str, line: str) -> None:
    assert generate_workload(3, sleep_ms) == [line] * 3


def test_generate_workload_counts_and_rejects_bad_input() -> None:
    lines = generate_workload(1000, 10)
    assert len(lines) == 1000
    assert set(lines) == {"sleep 0.01"}
    assert generate_workload(0, 10) == []
    with pytest.raises(ValueError, match="non-negative"):
        generate_workload(-1, 10)
    with pytest.raises(ValueError, match="non-negative"):
        generate_workload(1, -5)
    with pytest.raises(ValueError, match="milliseconds"):
        generate_workload(1, "soon")
    with pytest.raises(ValueError, match="non-negative"):
        generate_workload(1, "nan")
