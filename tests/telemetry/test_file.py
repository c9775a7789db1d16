"""The `file` exporter: JSON lines in the state directory, rotated by size, bounded on disk."""

from __future__ import annotations

import json
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agentd.telemetry.export import FileSpanExporter, RotatingFile


def test_rotation_keeps_the_files_and_the_total_bounded(tmp_path: Path) -> None:
    out = RotatingFile(tmp_path / "spans.jsonl", max_bytes=4096, keep=2)
    line = b"x" * 99  # 100 bytes with the newline
    for i in range(1000):  # 100 kB written, 25x the bound of one file
        out.write_lines([line[:-4] + b"%04d" % i])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["spans.jsonl", "spans.jsonl.1", "spans.jsonl.2"]
    sizes = [(tmp_path / f).stat().st_size for f in files]
    assert all(0 < s <= 4096 for s in sizes), sizes
    # the newest rows are in the live file, the ones before them in .1
    last = (tmp_path / "spans.jsonl").read_bytes().splitlines()[-1]
    assert last.endswith(b"0999")
    first_live = (tmp_path / "spans.jsonl").read_bytes().splitlines()[0]
    last_rotated = (tmp_path / "spans.jsonl.1").read_bytes().splitlines()[-1]
    assert int(last_rotated[-4:]) + 1 == int(first_live[-4:])


def test_spans_are_one_json_object_per_line(tmp_path: Path) -> None:
    exporter = FileSpanExporter(RotatingFile(tmp_path / "spans.jsonl", 1 << 20, 1))
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("outer"), tracer.start_as_current_span("inner") as inner:
        inner.set_attribute("agentd.plugin", "temp")
    provider.shutdown()
    rows = [json.loads(line) for line in (tmp_path / "spans.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ["inner", "outer"]
    inner_row, outer_row = rows
    assert inner_row["trace_id"] == outer_row["trace_id"]
    assert inner_row["parent_span_id"] == outer_row["span_id"]
    assert outer_row["parent_span_id"] is None
    assert inner_row["attributes"] == {"agentd.plugin": "temp"}
    assert inner_row["start_time_unix_nano"] <= inner_row["end_time_unix_nano"]


def test_an_unwritable_directory_fails_the_export_with_a_reason(tmp_path: Path) -> None:
    target = tmp_path / "gone" / "spans.jsonl"  # its directory does not exist
    exporter = FileSpanExporter(RotatingFile(target, 4096, 1))
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.get_tracer("test").start_span("s").end()
    provider.shutdown()
    assert exporter.last_error == f"cannot write {target}: No such file or directory"
