"""read_json, the project's one reader of JSON documents (results.json, manifest.json, transfer.json)."""

from __future__ import annotations

from sftune.artifacts import RunDir, read_json


def test_read_json_gives_the_object_or_none(tmp_path):
    path = tmp_path / "doc.json"
    assert read_json(path) is None  # not written yet
    path.write_text('{"status": "complete", "metrics": {"validation": {"accuracy": 0.5}}}')
    assert read_json(path) == {"status": "complete", "metrics": {"validation": {"accuracy": 0.5}}}
    path.write_text('{"status": "compl')  # a torn write
    assert read_json(path) is None
    path.write_text("[1, 2]")  # JSON, but not a document
    assert read_json(path) is None
    path.write_bytes(b'{"a": "\xff"}')  # not UTF-8
    assert read_json(path) is None
    assert read_json(tmp_path) is None  # a directory


def test_run_dir_statuses_read_through_it(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    assert run.final_status() is None and run.status() is None
    run.results.write_text("[]")
    run.manifest.write_text('{"status": "running", "sftune_version": "0"}')
    assert run.final_status() is None and run.status() == "running" and run.made_by_sftune()
    run.results.write_text('{"status": "diverged"}')
    assert run.final_status() == "diverged"
