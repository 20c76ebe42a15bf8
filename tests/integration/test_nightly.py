"""The nightly DAG: directory from a Variable, incremental, verified, named by its data interval."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.runs import run_dag, xcom


def test_manifest_is_named_by_the_data_interval_for_scheduled_runs() -> None:
    from cloud_backup_dags import _manifest_name

    start = datetime(2026, 12, 2, 2, 0, tzinfo=timezone.utc)
    end = datetime(2026, 12, 3, 2, 0, tzinfo=timezone.utc)
    scheduled = {
        "dag": SimpleNamespace(dag_id="cloud_backup_nightly"),
        "dag_run": SimpleNamespace(run_type="scheduled", run_id="scheduled__2026-12-03T02:00"),
        "data_interval_start": start,
        "data_interval_end": end,
    }
    assert _manifest_name(scheduled) == (
        "_cloud_backup/manifests/cloud_backup_nightly/"
        "2026-12-02T020000Z--2026-12-03T020000Z.jsonl.gz"
    )
    manual = {**scheduled, "dag_run": SimpleNamespace(run_type="manual", run_id="manual__x")}
    assert _manifest_name(manual).endswith("/manual__x.jsonl.gz")


def test_nightly_backs_up_the_variable_directory_and_verifies(
    tmp_path: Path, azurite: str, inproc_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud_backup_dags import cloud_backup_nightly

    (tmp_path / "a.txt").write_bytes(b"nightly")
    monkeypatch.setenv("AIRFLOW_VAR_CLOUD_BACKUP_NIGHTLY_DIRECTORY", str(tmp_path))
    container = f"night-{uuid.uuid4().hex[:10]}"
    run = run_dag(cloud_backup_nightly, {"container": container})
    assert xcom(run, "total_bytes") == 7
    assert xcom(run, "verify")["checked_files"] == 1  # verify is on ("quick") by default
    again = run_dag(cloud_backup_nightly, {"container": container})
    assert xcom(again, "total_bytes", "summary")["unchanged"] == 1


def test_nightly_without_a_directory_fails_saying_what_to_set(
    azurite, inproc_db, monkeypatch, capfd
) -> None:
    from cloud_backup_dags import cloud_backup_nightly

    monkeypatch.delenv("AIRFLOW_VAR_CLOUD_BACKUP_NIGHTLY_DIRECTORY", raising=False)
    monkeypatch.delenv("CLOUD_BACKUP_NIGHTLY_DIRECTORY", raising=False)
    run = run_dag(cloud_backup_nightly, {}, expect="failed")
    assert xcom(run, "total_bytes") is None
    out = capfd.readouterr()
    assert "directory is not set" in out.out + out.err
    assert "cloud_backup_nightly_directory" in out.out + out.err
