"""The DAG files import cleanly, fast, with no connection look-up, and have the designed shape."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    with mock.patch(
        "airflow.providers.microsoft.azure.hooks.wasb.WasbHook.get_connection",
        side_effect=AssertionError("parsing must not look up a connection"),
    ):
        return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"cloud_backup", "cloud_backup_nightly", "cloud_restore"}


@pytest.mark.parametrize("dag_id", ["cloud_backup", "cloud_backup_nightly"])
def test_shape(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert set(dag.task_ids) == {"list_files", "upload", "total_bytes", "verify"}
    assert dag.get_task("list_files").downstream_task_ids == {"upload", "total_bytes", "verify"}
    assert dag.get_task("upload").downstream_task_ids == {"total_bytes"}
    assert dag.get_task("total_bytes").downstream_task_ids == {"verify"}
    upload = dag.get_task("upload")
    assert upload.map_index_template == "{{ batch_label }}"
    # Its dict result is one XCom; inferred multiple_outputs would push each key as one more.
    assert upload.multiple_outputs is False
    assert upload.retries >= 3 and upload.retry_exponential_backoff >= 2
    assert dag.get_task("total_bytes").trigger_rule == "none_failed"
    assert dag.max_active_runs == 1 and dag.catchup is False


def test_restore_download_pushes_one_xcom(dagbag) -> None:
    assert dagbag.dags["cloud_restore"].get_task("download").multiple_outputs is False


def test_nightly_is_scheduled_and_its_defaults_validate(dagbag) -> None:
    nightly = dagbag.dags["cloud_backup_nightly"]
    assert nightly.timetable.can_be_scheduled
    assert nightly.timetable.expression == "0 2 * * *"
    nightly.params.validate()  # a scheduled DAG's defaults must validate
    assert nightly.params["verify"] == "quick" and nightly.params["incremental"] is True
    assert dagbag.dags["cloud_backup"].params["verify"] == "off"
    assert not dagbag.dags["cloud_backup"].timetable.can_be_scheduled


@pytest.mark.parametrize("dag_file", ["cloud_backup_dags.py", "cloud_restore_dags.py"])
def test_dag_file_parses_fast_and_does_no_io(dag_file: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(DAGS.parent / "include")}
    started = time.monotonic()
    subprocess.run([sys.executable, str(DAGS / dag_file)], check=True, env=env)
    assert time.monotonic() - started < 10  # a cold interpreter importing airflow.sdk
