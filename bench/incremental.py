"""``make bench`` cases ``noop`` and ``churn``: a second backup of the small set, the DAG against rclone.

Per contender: a fresh container gets the small set once (untimed); then, timed, in each run the
same contender backs it up again with nothing changed (``noop``), then again after 1% of the files
were rewritten in place (``churn``: same sizes, new bytes, new mtimes; other files each run).
rclone's second pass is a second ``rclone copy`` (size + modification time, as it does by
default); the DAG's is an incremental run.
After each pass the container is verified (blob count and bytes) and, for churn, the rewritten
files' blobs are read back and compared. Targets: ``dag_vs_rclone`` >= 1.0 in both cases.
The rewrites stay in the data set (same sizes and count): the small set is no longer the seeded one
byte for byte after this, which the other cases do not depend on.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_data  # noqa: E402
from common import (  # noqa: E402
    OUT,
    delete_container,
    fresh_azurite,
    fresh_container,
    median,
    say,
    service_client,
    settings,
    verify,
    warm_page_cache,
)
from run_bench import _seconds, up_rclone  # noqa: E402

from cloud_backup.local import stack  # noqa: E402
from cloud_backup.local.api import AirflowApi, admin_password  # noqa: E402
from cloud_backup.local.cli import DAG_ID, allow_directory, run_backup  # noqa: E402
from cloud_backup.naming import blob_name_for  # noqa: E402

CHURN_SHARE = 0.01


def _rewrite(data: gen_data.DataSet, run: int) -> list[Path]:
    """Rewrite 1% of the files in place: same size, new bytes, a new mtime."""
    files = sorted(p for p in data.directory.rglob("*") if p.is_file())
    chosen = random.Random(run).sample(files, max(1, int(len(files) * CHURN_SHARE)))
    for path in chosen:
        path.write_bytes(os.urandom(path.stat().st_size))
    return chosen


def _dag_pass(s: stack.Settings, api: AirflowApi, data: gen_data.DataSet, container: str,
              expect_files: int) -> float:
    result = run_backup(s, {"directory": str(data.directory), "container": container})
    if result["state"] != "success" or result["files"] != expect_files:
        raise RuntimeError(f"DAG run {result['dag_run_id']}: {result['state']}, uploaded "
                           f"{result.get('files')} files, expected {expect_files}")
    run = api.run(DAG_ID, result["dag_run_id"])
    return _seconds(run["queued_at"], run["end_date"])


def _check_rewritten(client: Any, data: gen_data.DataSet, prefix: str,
                     rewritten: list[Path]) -> None:
    for path in rewritten:
        name = prefix + str(path.relative_to(data.directory))
        stored = client.download_blob(name, decompress=False).readall()
        if hashlib.md5(stored).digest() != hashlib.md5(path.read_bytes()).digest():
            raise RuntimeError(f"{name}: the blob does not hold the rewritten bytes")


def run_incremental(s: stack.Settings, api: AirflowApi, runs: int) -> dict[str, dict[str, Any]]:
    """The ``noop`` and ``churn`` results, in run_bench's shape (medians, runs, loads)."""
    data = gen_data.make("small")
    allow_directory(api, str(data.directory))
    transfers = int(os.environ.get("BENCH_RCLONE_INCREMENTAL_TRANSFERS", "16"))
    cases = ("noop", "churn")
    seconds = {case: {"dag": [], "rclone": []} for case in cases}
    loads = {case: {"dag": [], "rclone": []} for case in cases}
    # One first copy per contender (untimed: rclone's takes ~10 minutes for 20,000 files into
    # Azurite), then every run's noop and churn passes into that same container. All of one
    # contender's passes come before the other's first copy: the churn rewrites the shared data
    # set, so interleaving would hand the second contender the first one's changes as its "noop".
    for contender in ("dag", "rclone"):
        fresh_azurite(s)
        container = fresh_container(contender, "incr")
        client = service_client(s).get_container_client(container)
        client.create_container()
        # The DAG names blobs by absolute path without the root; rclone relative to the source.
        prefix = blob_name_for(str(data.directory), "") if contender == "dag" else ""
        try:
            say(f"[incremental] {contender}: first copy (untimed) ...")
            if contender == "dag":
                _dag_pass(s, api, data, container, data.files)
            else:
                up_rclone(s, data, container, transfers)
            verify(client, data.files, data.bytes)
            for run in range(runs):
                for case in cases:
                    rewritten = _rewrite(data, run) if case == "churn" else []
                    warm_page_cache(data.directory)
                    loads[case][contender].append(round(os.getloadavg()[0], 2))
                    started = time.monotonic()
                    if contender == "dag":
                        took = _dag_pass(s, api, data, container, len(rewritten))
                    else:
                        up_rclone(s, data, container, transfers)
                        took = time.monotonic() - started
                    verify(client, data.files, data.bytes)
                    _check_rewritten(client, data, prefix, rewritten)
                    seconds[case][contender].append(round(took, 2))
                    say(f"  run {run + 1}/{runs} {case}: {contender} {took:.2f}s "
                        f"({len(rewritten)} files rewritten)")
        finally:
            delete_container(client)
    results = {}
    for case in cases:
        med = {c: median(v) for c, v in seconds[case].items()}
        results[case] = {
            "files": data.files, "bytes": data.bytes,
            "changed_files": int(data.files * CHURN_SHARE) if case == "churn" else 0,
            "seconds": med, "dag_vs_rclone": round(med["rclone"] / med["dag"], 3),
            "runs": seconds[case], "load_before": loads[case],
        }
    return results


def main() -> int:
    s = settings()
    api = AirflowApi(s.api_url, "admin", admin_password(s.airflow_home))
    results = run_incremental(s, api, int(os.environ.get("BENCH_RUNS", "3")))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench-incremental-latest.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
