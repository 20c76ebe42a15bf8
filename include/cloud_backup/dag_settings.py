"""What the backup and restore DAGs share: deployment settings, retry behaviour, small helpers.

Read from the environment when a DAG file is parsed (no network, no Variables: those are read
inside tasks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

CONN_ID = "wasb_default"
# Mapped tasks that may run at once per run, and files in flight inside each: the box's real
# parallelism (Azurite and the uploads share 2 cores with Airflow), not the file count.
PARALLELISM = int(os.environ.get("CLOUD_BACKUP_PARALLELISM", "4"))
FILE_THREADS = int(os.environ.get("CLOUD_BACKUP_FILE_THREADS", "16"))
RETRY_DELAY = timedelta(seconds=float(os.environ.get("CLOUD_BACKUP_RETRY_DELAY", "10")))
NIGHTLY_SCHEDULE = os.environ.get("CLOUD_BACKUP_NIGHTLY_SCHEDULE", "0 2 * * *")

CONTAINER_PATTERN = r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$"
PREFIX_PATTERN = r"^(?!.*(^|/)\.\.?(/|$))[^\\]*$"

# Exceptions that no retry can cure: bad configuration, a refused target, refused credentials, a
# backup that does not match its manifest. Everything else (storage trouble) is retried.
FAIL_AT_ONCE = {
    "cloud_backup.tasks.BadRequest": "bad configuration: retrying cannot help",
    "cloud_backup.restore.RestoreRefused": "the restore cannot proceed as asked",
    "cloud_backup.verify.VerificationFailed": "the stored backup does not match its manifest",
    "azure.core.exceptions.ClientAuthenticationError": "the storage refused the credentials",
}


def default_args() -> dict[str, Any]:
    """Retries with exponential back-off; the exceptions above fail at once."""
    from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

    policy = ExceptionRetryPolicy(
        rules=[RetryRule(exception=path, action=RetryAction.FAIL, reason=reason)
               for path, reason in FAIL_AT_ONCE.items()]
    )
    return {
        "retries": 3,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "retry_policy": policy,
    }


def batch_label(batch: dict[str, Any]) -> str:
    """A mapped instance's label in the UI: its batch's first file and how many follow."""
    more = batch["files"] - 1
    return batch["first"] + (f" (+{more} files)" if more else "")


def collect(results: Sequence[Any] | None) -> list[Any]:
    """All results of a mapped task, fetched in slices (item by item probes one past the end)."""
    results = results or []
    return [r for start in range(0, len(results), 100) for r in results[start:start + 100]]
