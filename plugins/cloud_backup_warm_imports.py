"""Import the Azure storage SDK once, in the scheduler, so that task processes start warm.

LocalExecutor workers are forked from the scheduler, and every task process from a worker: a
module the scheduler has imported costs a task nothing. Importing the provider's ``WasbHook`` with
azure-storage-blob costs each task ~0.4 s of CPU otherwise, twice on a run's critical path
(``list_files``, ``total_bytes``) and once per upload batch. Loaded at startup only with
``[core] lazy_load_plugins = False`` (the local stack and docker-compose.yaml set it).

Only pinned third-party code is preloaded, never this project's own modules: a task must run the
``include/`` code on disk, not the version the scheduler saw when it started.
"""

from __future__ import annotations

import azure.storage.blob  # noqa: F401
from airflow.plugins_manager import AirflowPlugin
from airflow.providers.microsoft.azure.hooks.wasb import WasbHook  # noqa: F401


class CloudBackupWarmImports(AirflowPlugin):
    name = "cloud_backup_warm_imports"
