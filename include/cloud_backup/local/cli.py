"""``python -m cloud_backup.local.cli start|stop|status|backup DIR``: what the Makefile runs.

``backup`` starts what is not running, triggers ``cloud_backup`` over the REST API exactly as a user
would, shows progress on stderr and ends with one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from cloud_backup.local import stack
from cloud_backup.local.api import TERMINAL, AirflowApi, ApiError, admin_password, ui_url

DAG_ID = "cloud_backup"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def api_for(settings: stack.Settings) -> AirflowApi:
    return AirflowApi(settings.api_url, "admin", admin_password(settings.airflow_home))


def failure_details(api: AirflowApi, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """Each failed task instance with the exception(s) its log recorded."""
    failed = []
    for ti in api.task_instances(dag_id, run_id, state="failed"):
        try:
            errors = api.task_errors(dag_id, run_id, ti)
        except ApiError as exc:
            errors = [f"(log unavailable: {exc})"]
        failed.append(
            {
                "task_id": ti["task_id"],
                "map_index": ti["map_index"],
                "label": ti.get("rendered_map_index"),
                "try_number": ti["try_number"],
                "error": "\n".join(errors[-5:]) or "(no error recorded in the task log)",
            }
        )
    return failed


def allow_directory(api: AirflowApi, directory: str) -> list[str]:
    """The local demo allows the directory it was given: add it to the allowed-roots Variable.

    A deployment lists its roots itself (Variable or CLOUD_BACKUP_ALLOWED_ROOTS) and never runs this.
    """
    from cloud_backup.tasks import ALLOWED_ROOTS_VARIABLE, parse_allowed_roots

    roots = parse_allowed_roots(api.variable(ALLOWED_ROOTS_VARIABLE))
    if directory not in roots:
        roots.append(directory)
        api.set_variable(ALLOWED_ROOTS_VARIABLE, json.dumps(roots))
    return roots


def trigger_and_wait(
    settings: stack.Settings, dag_id: str, conf: dict[str, Any], mapped_task: str,
    timeout: float = 24 * 3600,
) -> tuple[AirflowApi, dict[str, Any]]:
    """Trigger ``dag_id`` over the REST API and wait, showing mapped instances done/total."""
    api = api_for(settings)
    api.wait_for_dag(dag_id)
    run_id = api.trigger(dag_id, conf)["dag_run_id"]
    _say(f"Triggered {dag_id} run {run_id}\n  watch it at {ui_url(settings.api_url, dag_id, run_id)}")
    last = [""]
    next_count = [0.0]

    def progress(current: dict[str, Any]) -> None:
        # Counting costs the API server CPU the uploads could use: every 5 s is enough to watch.
        if current["state"] not in TERMINAL and time.monotonic() < next_count[0]:
            return
        next_count[0] = time.monotonic() + 5
        # Until the listing is expanded the mapped task has one placeholder instance at map_index
        # -1 (expansion renumbers it 0); an expansion over nothing leaves it skipped, a failed
        # listing upstream_failed. It is not a batch: counting it showed "0/1" while listing.
        if api.count(dag_id, run_id, mapped_task, map_index=-1):
            line = (f"  {current['state']}: no {mapped_task} batches ran"
                    if current["state"] in TERMINAL else f"  {current['state']}: listing files")
        else:
            total = api.count(dag_id, run_id, mapped_task)
            done = api.count(dag_id, run_id, mapped_task, ["success"])
            line = f"  {current['state']}: {done}/{total} {mapped_task} batches done"
        if line != last[0]:
            _say(line)
            last[0] = line

    return api, api.wait(dag_id, run_id, timeout=timeout, on_progress=progress)


def _result(api: AirflowApi, settings: stack.Settings, dag_id: str, run: dict[str, Any],
            reduce_task: str, fields: dict[str, str]) -> dict[str, Any]:
    """The JSON result line: run id, state, the reduce task's figures (or the failures), UI link."""
    run_id = run["dag_run_id"]
    result: dict[str, Any] = {"dag_run_id": run_id, "state": run["state"]}
    if run["state"] == "success":
        summary = api.xcom(dag_id, run_id, reduce_task, "summary")
        result["files"] = summary[fields.pop("files")]
        result["total_bytes"] = api.xcom(dag_id, run_id, reduce_task)
        result.update({key: summary[name] for key, name in fields.items()})
    else:
        result["failed_tasks"] = failure_details(api, dag_id, run_id)
    result["ui"] = ui_url(settings.api_url, dag_id, run_id)
    return result


def run_backup(settings: stack.Settings, conf: dict[str, Any], dag_id: str = DAG_ID,
               timeout: float = 24 * 3600) -> dict[str, Any]:
    """Trigger a backup run over the REST API, wait for it, return the result line's fields."""
    api, run = trigger_and_wait(settings, dag_id, conf, "upload", timeout)
    return _result(api, settings, dag_id, run, "total_bytes", {
        "files": "files", "unchanged": "unchanged", "protected_bytes": "protected_bytes",
        "skipped": "skipped_count", "vanished": "vanished_count", "manifest": "manifest"})


def run_restore(settings: stack.Settings, conf: dict[str, Any],
                timeout: float = 24 * 3600) -> dict[str, Any]:
    """Trigger ``cloud_restore`` over the REST API, wait for it, return the result line's fields."""
    api, run = trigger_and_wait(settings, "cloud_restore", conf, "download", timeout)
    return _result(api, settings, "cloud_restore", run, "restored_bytes",
                   {"files": "restored_files", "manifest": "manifest", "target": "target"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cloud-backup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("start", help="start the parts of the local stack that are not running")
    sub.add_parser("stop", help="stop the local stack")
    sub.add_parser("status", help="show each part of the local stack")
    backup = sub.add_parser("backup", help="back up a directory and print the result as JSON")
    backup.add_argument("directory")
    backup.add_argument("--container", default=os.environ.get("CONTAINER") or "backups")
    backup.add_argument("--prefix", default=os.environ.get("PREFIX") or "")
    backup.add_argument("--full", action="store_true", default=bool(os.environ.get("FULL")),
                        help="upload every file, even those the container already holds")
    restore = sub.add_parser("restore", help="restore the latest backup of a directory")
    restore.add_argument("directory", help="the directory that was backed up")
    restore.add_argument("target", help="where to restore it (absolute path)")
    restore.add_argument("--container", default=os.environ.get("CONTAINER") or "backups")
    restore.add_argument("--prefix", default=os.environ.get("PREFIX") or "")
    restore.add_argument("--sub-path", default=os.environ.get("SUB_PATH") or "")
    restore.add_argument("--overwrite", action="store_true",
                         default=bool(os.environ.get("OVERWRITE")))
    args = parser.parse_args(argv)
    settings = stack.Settings.from_env()

    if args.command == "stop":
        stopped = stack.stop(settings)
        _say("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if args.command == "status":
        states = stack.health(settings)
        for name, state in states.items():
            print(f"{name:14} {state}")
        print(f"{'ui':14} {settings.api_url}")
        return 0 if all(s == "running" for s in states.values()) else 3

    if not all(stack.pid_of(settings, name) for name in stack.components(settings)):
        _say(f"Starting the local stack in {settings.state} (logs in {settings.log_dir}) ...")
    try:
        stack.start(settings)
    except RuntimeError as exc:
        _say(f"error: {exc}")
        return 1
    if args.command == "start":
        _say(f"Airflow UI: {settings.api_url} (user admin, password in "
             f"{settings.airflow_home / 'simple_auth_manager_passwords.json.generated'})")
        return 0

    conf: dict[str, Any] = {"directory": os.path.abspath(args.directory),
                            "container": args.container, "prefix": args.prefix}
    try:
        if args.command == "backup":
            allow_directory(api_for(settings), conf["directory"])
            result = run_backup(settings, {**conf, "incremental": not args.full})
        else:
            allow_directory(api_for(settings), os.path.abspath(args.target))
            result = run_restore(settings, {**conf, "target": os.path.abspath(args.target),
                                            "sub_path": args.sub_path,
                                            "overwrite": args.overwrite})
    except ApiError as exc:
        _say(f"error: the API refused the run: {exc}")
        return 2
    print(json.dumps(result), flush=True)
    if result["state"] != "success":
        for failure in result["failed_tasks"]:
            mapped = failure["map_index"] is not None and failure["map_index"] >= 0
            where = (f"{failure['task_id']}[{failure['map_index']}] {failure['label'] or ''}"
                     if mapped else failure["task_id"])
            _say(f"FAILED {where.rstrip()} (try {failure['try_number']}):\n{failure['error']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
