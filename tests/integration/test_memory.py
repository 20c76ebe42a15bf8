"""Large files stream in bounded memory: a task's peak RSS does not grow with the file size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from cloud_backup.local.stack import REPO

UPLOAD_AND_MEASURE = """
import json, sys
from cloud_backup.store import container_client, ensure_container
from cloud_backup.upload import upload_batch
from cloud_backup.walk import FileEntry, walk_tree
client = container_client("wasb_default", sys.argv[2])
ensure_container(client)
entries = [e for e in walk_tree(sys.argv[1]) if isinstance(e, FileEntry)]
report = upload_batch(client, sys.argv[1], entries, batch=0, prefix="m")
props = client.get_blob_client("m/sparse.bin").get_blob_properties()
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a
# pytest that had grown to 1 GB (the 5-million-file batching test) reported 1 GB itself.
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"bytes": report.bytes, "blob_size": props.size, "peak_rss_mb": hwm_kb / 1024}))
"""


def test_a_4_gib_sparse_file_uploads_with_peak_rss_under_512_mb(tmp_path: Path, azurite) -> None:
    size = 4 * 1024**3 + 123  # issue #5: a 4 GiB file, past any 32-bit offset or int limit
    with open(tmp_path / "sparse.bin", "wb") as sparse:
        sparse.truncate(size)
    container = f"mem-{uuid.uuid4().hex[:10]}"
    out = subprocess.run(
        [sys.executable, "-c", UPLOAD_AND_MEASURE, str(tmp_path), container],
        check=True, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "include")},
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["bytes"] == figures["blob_size"] == size
    assert figures["peak_rss_mb"] < 512, figures
