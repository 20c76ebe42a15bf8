"""Helpers for in-process `dag.test()` runs and reading what they left."""

from __future__ import annotations

import copy
from typing import Any

from cloud_backup.naming import CONTROL_PREFIX


def run_dag(dag: Any, conf: dict[str, Any], expect: str = "success") -> Any:
    # In one process, run_conf leaks into the DAG's Param objects: the task SDK's process_params()
    # (airflow/sdk/definitions/param.py) copies references to them, then resolves the conf's value
    # into each. Put every value back, so that each run's conf is its own.
    params = [p for holder in (dag, *dag.tasks) for p in (holder.params or {}).values()]
    saved = [copy.deepcopy(p.value) for p in params]
    try:
        run = dag.test(run_conf=conf)
    finally:
        for param, value in zip(params, saved, strict=True):
            param.value = value
    assert str(run.state) in (expect, f"DagRunState.{expect.upper()}"), run.state
    return run


def xcom(run: Any, task_id: str, key: str = "return_value") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id, key=key)
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def blobs(container_name: str, with_control: bool = False) -> dict[str, bytes]:
    """Every blob's bytes, read back from the store (our bookkeeping left out unless asked)."""
    from cloud_backup.store import container_client

    client = container_client("wasb_default", container_name)
    return {
        b.name: client.download_blob(b.name, decompress=False).readall()
        for b in client.list_blobs()
        if with_control or not b.name.startswith(CONTROL_PREFIX)
    }
