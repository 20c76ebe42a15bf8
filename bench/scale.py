"""``make bench-scale``: the DAG on a tree of 1,000,000 empty files, watched while it runs.

Reports, as one JSON line on stdout (progress on stderr, a copy in bench/out/scale-latest.json):
- list_files: duration (the task instance's own start/end) and its log line "Listed N files ...",
  peak RSS of the task process (VmHWM from /proc/PID/status, sampled while it runs; the PID is the
  one the task instance reports over the API);
- the number of mapped ``upload`` instances;
- the largest XCom row of the run (length of ``xcom.value`` in the stack's SQLite DB);
- responsiveness: latency of the run page's HTML, the UI's grid calls for the run, the run over
  the REST API and /api/v2/monitor/health, probed every BENCH_SCALE_PROBE seconds (default 2).

Uploading a million blobs into Azurite takes about an hour on 2 cores, so by default the run is
watched for BENCH_SCALE_OBSERVE seconds (default 180) of its upload phase and then stopped
(marked failed over the API) and its container deleted. BENCH_SCALE_FULL=1 waits for the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import statistics
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_data  # noqa: E402
from common import (  # noqa: E402
    OUT,
    delete_container,
    fresh_container,
    say,
    service_client,
    settings,
    stored,
)

from cloud_backup.local import stack  # noqa: E402
from cloud_backup.local.api import TERMINAL, AirflowApi, admin_password  # noqa: E402
from cloud_backup.local.cli import DAG_ID  # noqa: E402

PROBE_EVERY = float(os.environ.get("BENCH_SCALE_PROBE", "2"))
OBSERVE = float(os.environ.get("BENCH_SCALE_OBSERVE", "180"))
FULL = os.environ.get("BENCH_SCALE_FULL", "") not in ("", "0", "false")
# "The run page loads": every probe answered, none slower than this.
RESPONSIVE_S = 5.0
MiB = 1024**2


class Prober(threading.Thread):
    """GETs what the run page needs, every few seconds, and keeps each endpoint's latencies."""

    def __init__(self, api: AirflowApi, run_id: str) -> None:
        super().__init__(daemon=True)
        base, q = api.base_url, quote(run_id, safe="")
        self.urls = {
            "run_page_html": f"{base}/dags/{DAG_ID}/runs/{q}",
            "grid_runs": f"{base}/ui/grid/runs/{DAG_ID}?limit=10",
            "grid_ti_summaries": f"{base}/ui/grid/ti_summaries/{DAG_ID}?run_ids={q}",
            "run_api": f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{q}",
            "health": f"{base}/api/v2/monitor/health",
        }
        self.session = requests.Session()
        self.session.headers["Authorization"] = api.session.headers["Authorization"]
        self.latencies: dict[str, list[float]] = {name: [] for name in self.urls}
        self.page: list[float] = []  # all of one probe's calls, one after the other
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0.0
            for name, url in self.urls.items():
                started = time.monotonic()
                try:
                    response = self.session.get(url, timeout=30)
                    response.raise_for_status()
                except requests.RequestException as exc:
                    self.errors.append(f"{name}: {exc}"[:200])
                elapsed = time.monotonic() - started
                self.latencies[name].append(elapsed)
                total += elapsed
            self.page.append(total)
            self.stop.wait(PROBE_EVERY)

    def report(self) -> dict[str, Any]:
        def stats(values: list[float]) -> dict[str, float]:
            if not values:
                return {}
            return {"max_s": round(max(values), 3), "median_s": round(statistics.median(values), 3)}

        return {
            "probes": len(self.page),
            "page_total": stats(self.page),
            **{name: stats(v) for name, v in self.latencies.items()},
            "errors": len(self.errors),
            "first_errors": self.errors[:3],
        }


def peak_rss(pid: int, done: threading.Event) -> dict[str, int]:
    """Sample a task process's VmHWM (the kernel's own peak-RSS mark) until it exits."""
    peak = {"task_kb": 0, "supervisor_kb": 0}
    parent = 0
    while not done.is_set():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            break
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        peak["task_kb"] = max(peak["task_kb"], int(fields.get("VmHWM", "0 kB").split()[0]))
        parent = int(fields.get("PPid", "0"))
        try:  # the supervisor that forked it, for context
            pstatus = Path(f"/proc/{parent}/status").read_text()
            hwm = re.search(r"VmHWM:\s+(\d+)", pstatus)
            if hwm:
                peak["supervisor_kb"] = max(peak["supervisor_kb"], int(hwm.group(1)))
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.1)
    return peak


def ti(api: AirflowApi, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any] | None:
    for item in api.task_instances(DAG_ID, run_id, task_id=task_id):
        if item["map_index"] == map_index:
            return item
    return None


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 2)


def xcom_sizes(s: stack.Settings, run_id: str) -> list[dict[str, Any]]:
    """Every XCom row of the run with its stored size, largest first (read-only, so the stack's
    writers are not blocked)."""
    db = s.airflow_home / "airflow.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute(
            "SELECT task_id, map_index, key, length(CAST(value AS BLOB)) FROM xcom "
            "WHERE dag_id = ? AND run_id = ? ORDER BY 4 DESC",
            (DAG_ID, run_id),
        ).fetchall()
    return [{"task_id": t, "map_index": m, "key": k, "bytes": n or 0} for t, m, k, n in rows]


def main() -> int:
    s = settings()
    if not all(state == "running" for state in stack.health(s).values()):
        say("the local stack is not up; run `make start` first")
        return 2
    data = gen_data.make("scale")
    api = AirflowApi(s.api_url, "admin", admin_password(s.airflow_home))
    api.wait_for_dag(DAG_ID)
    container = fresh_container("dag", "scale")
    report: dict[str, Any] = {"files": data.files, "directory": str(data.directory)}

    run = api.trigger(DAG_ID, {"directory": str(data.directory), "container": container})
    run_id = run["dag_run_id"]
    say(f"Triggered {run_id} on {data.files:,} files into container {container}")
    prober = Prober(api, run_id)
    prober.start()
    try:
        # list_files: catch its PID as soon as it runs, then follow its memory until it exits.
        while True:
            lf = ti(api, run_id, "list_files")
            if lf and lf.get("pid") and lf["state"] == "running":
                break
            if lf and lf["state"] in TERMINAL | {"upstream_failed"}:
                break
            time.sleep(0.3)
        memory: dict[str, int] = {}
        if lf and lf["state"] == "running":
            say(f"list_files running as PID {lf['pid']}; sampling its memory ...")
            memory = peak_rss(lf["pid"], threading.Event())
        while lf is None or lf["state"] not in TERMINAL | {"upstream_failed"}:
            time.sleep(1)
            lf = ti(api, run_id, "list_files")
        log = api.task_log(DAG_ID, run_id, lf)
        listed = next((line.strip() for line in log.splitlines() if "Listed " in line), None)
        match = re.search(r"into (\d+) batches", listed or "")
        report["list_files"] = {
            "state": lf["state"],
            "seconds": seconds_between(lf["start_date"], lf["end_date"]),
            "peak_rss_mb": round(memory.get("task_kb", 0) / 1024, 1) or None,
            "supervisor_peak_rss_mb": round(memory.get("supervisor_kb", 0) / 1024, 1) or None,
            "log_line": listed,
        }
        say(f"list_files: {report['list_files']}")
        if lf["state"] != "success":
            raise RuntimeError(f"list_files {lf['state']}:\n{log[-3000:]}")

        # The scheduler expands `upload` once list_files' XCom is in.
        deadline = time.monotonic() + 120
        mapped = 0
        while mapped == 0 and time.monotonic() < deadline:
            mapped = api.count(DAG_ID, run_id, "upload")
            time.sleep(1)
        report["batches_logged"] = int(match.group(1)) if match else None
        report["mapped_instances"] = mapped
        say(f"upload expanded to {mapped} mapped instances; watching the uploads ...")

        started = time.monotonic()
        while True:
            state = api.run(DAG_ID, run_id)["state"]
            if state in TERMINAL or (not FULL and time.monotonic() - started > OBSERVE):
                break
            time.sleep(5)
        report["upload_observed_s"] = round(time.monotonic() - started, 1)
        report["uploads_done"] = api.count(DAG_ID, run_id, "upload", ["success"])
        report["run_state"] = state
        if state not in TERMINAL:
            # Stop here: the rest would only upload more empty blobs for the next hour.
            api.call("PATCH", f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}",
                     json={"state": "failed"})
            report["run_state"] = f"{state} (stopped after {OBSERVE:.0f}s of uploads)"
        else:
            run = api.run(DAG_ID, run_id)
            report["run_seconds"] = seconds_between(run["queued_at"], run["end_date"])
    finally:
        prober.stop.set()
        prober.join()
        client = service_client(s).get_container_client(container)
        with contextlib.suppress(Exception):
            report["blobs_stored"] = stored(client).blobs
        delete_container(client)

    rows = xcom_sizes(s, run_id)
    report["xcom"] = {"rows": len(rows), "max_bytes": rows[0]["bytes"] if rows else 0,
                      "largest": rows[:3]}
    report["responsiveness"] = prober.report()
    page_max = report["responsiveness"]["page_total"].get("max_s", 0.0)
    lf_report = report["list_files"]
    report["targets"] = {
        "list_files_under_60s": (lf_report["seconds"] or 1e9) < 60,
        "list_files_peak_rss_under_512mb": (lf_report["peak_rss_mb"] or 1e9) < 512,
        "mapped_at_most_1024": 0 < mapped <= 1024,
        "xcom_rows_under_1mb": report["xcom"]["max_bytes"] < MiB,
        f"run_page_loads_under_{RESPONSIVE_S:.0f}s":
            report["responsiveness"]["errors"] == 0 and page_max < RESPONSIVE_S,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scale-latest.json").write_text(json.dumps(report, indent=2))
    say(json.dumps(report, indent=2))
    print(json.dumps(report), flush=True)
    return 0 if all(report["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
