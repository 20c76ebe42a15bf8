from __future__ import annotations

from cloud_backup.local.api import log_line


def test_a_task_failure_log_entry_keeps_the_exception_type_and_message() -> None:
    # The shape Airflow 3.3 writes for a failed task (copied from a real task log).
    entry = {
        "timestamp": "2026-12-03T17:27:30.154897Z", "level": "error",
        "event": "Task failed with exception", "logger": "task",
        "error_detail": [{"exc_type": "BatchUploadError",
                          "exc_value": "batch 3: 1 of 148 files could not be stored:\n  'zz/p.txt': "
                                       "HttpResponseError: Operation returned an invalid status",
                          "exc_notes": [], "is_cause": False, "frames": []}],
    }
    assert log_line(entry) == (
        "Task failed with exception\nBatchUploadError: batch 3: 1 of 148 files could not be stored:"
        "\n  'zz/p.txt': HttpResponseError: Operation returned an invalid status"
    )
    assert log_line({"event": "plain"}) == "plain"
    assert log_line("raw text") == "raw text"
