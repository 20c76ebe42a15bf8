"""Access to the target storage through the Azure provider's ``WasbHook``, and the run's listings.

One ``WasbHook`` (so one ``BlobServiceClient`` and one HTTP pool) per task, shared by its threads:
a hook per file costs ~1.2 ms of CPU and a third of the throughput (FACTS.md).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

from cloud_backup.naming import CONTROL_PREFIX
from cloud_backup.walk import FileEntry

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

# azure-core's requests transport keeps 10 connections per host; the upload threads need more, or
# they churn connections ("Connection pool is full").
HTTP_POOL_SIZE = 32


def container_client(conn_id: str, container: str) -> ContainerClient:
    """A client for ``container`` built from Airflow connection ``conn_id`` (a ``wasb`` connection)."""
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

    service = WasbHook(wasb_conn_id=conn_id).blob_service_client
    _widen_http_pool(service)
    return service.get_container_client(container)


def _widen_http_pool(service: object) -> None:
    from azure.core.pipeline.transport import RequestsTransport

    transport = getattr(getattr(service, "_pipeline", None), "_transport", None)
    if not isinstance(transport, RequestsTransport):
        return  # another transport was configured: leave it alone
    transport.open()
    # Same adapter class azure-core mounts (it reads with bigger blocks), only a bigger pool.
    adapter = transport.session.get_adapter("https://")
    wider = type(adapter)(pool_maxsize=HTTP_POOL_SIZE, max_retries=adapter.max_retries)
    for scheme in ("http://", "https://"):
        transport.session.mount(scheme, wider)


def ensure_container(client: ContainerClient) -> None:
    """Create the container unless it exists (any other refusal, e.g. bad credentials, raises)."""
    from azure.core.exceptions import ResourceExistsError

    try:
        client.create_container()
    except ResourceExistsError:
        pass


def run_folder(dag_id: str, run_id: str) -> str:
    """Where one run keeps its listings and results inside the target container."""
    return f"{CONTROL_PREFIX}runs/{dag_id}/{run_id}/"


# -- What the container already holds ------------------------------------------------------------
# One listing of the container decides "unchanged" for every file: never one request per file.
# Each blob is kept as 32 packed bytes (size, mtime_ns, MD5), so a million blobs fit in ~200 MB.
_PACK = struct.Struct("<qq16s")


def pack_stored(size: int, mtime_ns: int | None, md5: bytes | None) -> bytes:
    return _PACK.pack(size, -1 if mtime_ns is None else mtime_ns, md5 or b"\0" * 16)


def unpack_stored(packed: bytes) -> tuple[int, int | None, bytes | None]:
    size, mtime_ns, md5 = _PACK.unpack(packed)
    return size, None if mtime_ns < 0 else mtime_ns, None if md5 == b"\0" * 16 else md5


def inventory(client: ContainerClient, name_prefix: str, page_size: int = 5000) -> dict[str, bytes]:
    """Every blob under ``name_prefix`` (outside our control prefix) -> packed size/mtime/MD5."""
    stored: dict[str, bytes] = {}
    for name, size, md5, metadata in list_blob_pages(client, name_prefix, page_size):
        if name.startswith(CONTROL_PREFIX):
            continue
        mtime = metadata.get("cb_mtime_ns", "")
        stored[name] = pack_stored(size, int(mtime) if mtime.isdigit() else None, md5)
    return stored


# The statuses of manifest lines whose blob the container holds after the run.
STORED_STATUSES = ("uploaded", "unchanged", "kept")


def manifest_inventory(client: ContainerClient, manifest: str) -> dict[str, bytes]:
    """What a run's manifest says the container holds: blob name -> packed size/mtime/MD5.

    One download of a gzipped file (~50 bytes a file) instead of listing the container, which
    Azurite serves at ~6,000 blobs/s (3.3 s for 20,000: as long as rclone's whole no-op copy).
    """
    stored: dict[str, bytes] = {}
    for record in read_part(client, manifest):
        if record.get("status") in STORED_STATUSES and record.get("md5"):
            stored[record["blob"]] = pack_stored(record["size"], record.get("mtime_ns"),
                                                 bytes.fromhex(record["md5"]))
    return stored


def list_blob_pages(
    client: ContainerClient, name_prefix: str, page_size: int = 5000
) -> Iterator[tuple[str, int, bytes | None, dict[str, str]]]:
    """(name, size, Content-MD5, metadata) of every blob under ``name_prefix``.

    The List Blobs call itself, through the client's own pipeline (auth, retries), parsed with
    ElementTree: the SDK's ``list_blobs`` deserialises each blob into model objects at ~1 ms of CPU
    apiece (5 s for 4,400 blobs here, minutes for a million); this takes ~15 µs.
    """
    import xml.etree.ElementTree as ElementTree
    from urllib.parse import quote, unquote

    from azure.core.exceptions import HttpResponseError
    from azure.core.rest import HttpRequest

    base, _, sas = client.url.partition("?")
    marker = ""
    while True:
        query = f"restype=container&comp=list&include=metadata&maxresults={page_size}"
        if name_prefix:
            query += "&prefix=" + quote(name_prefix, safe="")
        if marker:
            query += "&marker=" + quote(marker, safe="")
        if sas:
            query += "&" + sas
        response = client._client._send_request(HttpRequest("GET", f"{base}?{query}"))
        if response.status_code != 200:
            raise HttpResponseError(response=response)
        root = ElementTree.fromstring(response.read())
        for blob in root.iterfind("Blobs/Blob"):
            name_node = blob.find("Name")
            name = name_node.text or ""
            if name_node.get("Encoded") == "true":  # names with characters XML cannot carry
                name = unquote(name)
            props = blob.find("Properties")
            md5 = props.findtext("Content-MD5")
            metadata = {m.tag: m.text or "" for m in blob.find("Metadata") or ()}
            yield (name, int(props.findtext("Content-Length") or 0),
                   base64.b64decode(md5) if md5 else None, metadata)
        marker = root.findtext("NextMarker") or ""
        if not marker:
            return


# -- Parts: gzipped JSON-lines blobs a run writes and later joins into its manifest ---------------
class PartWriter:
    """Streams JSON lines into a gzipped temporary file; ``close()`` stores it as one blob."""

    def __init__(self, client: ContainerClient, blob_name: str) -> None:
        self.client, self.blob_name, self.count = client, blob_name, 0
        self._file: IO[bytes] = tempfile.TemporaryFile()
        self._gzip = gzip.GzipFile(fileobj=self._file, mode="wb", compresslevel=5)
        self._lines: list[str] = []

    def write(self, record: Any) -> None:
        # Lines go to gzip a thousand at a time: one compress call per line cost 10 us a file.
        self._lines.append(json.dumps(record, ensure_ascii=True))
        self.count += 1
        if len(self._lines) >= 1000:
            self._flush()

    def _flush(self) -> None:
        if self._lines:
            self._gzip.write(("\n".join(self._lines) + "\n").encode("ascii"))
            self._lines.clear()

    def close(self) -> None:
        self._flush()
        self._gzip.close()
        size = self._file.tell()
        self._file.seek(0)
        self.client.upload_blob(self.blob_name, self._file, length=size, overwrite=True)
        self._file.close()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()


def read_part(client: ContainerClient, blob_name: str) -> Iterator[Any]:
    """The records of a part (or a manifest), streamed: memory does not grow with its size."""
    with tempfile.TemporaryFile() as spool:
        client.download_blob(blob_name).readinto(spool)
        spool.seek(0)
        with gzip.GzipFile(fileobj=spool, mode="rb") as lines:
            for line in lines:
                yield json.loads(line)


def compose(client: ContainerClient, blob_name: str, parts: Iterable[str]) -> None:
    """Join gzipped parts into one blob (concatenated gzip members are one valid gzip stream)."""
    from azure.storage.blob import BlobBlock, ContentSettings

    target = client.get_blob_client(blob_name)
    block_ids = []
    from azure.core.exceptions import ResourceNotFoundError

    for index, part in enumerate(parts):
        try:
            data = client.download_blob(part).readall()  # a batch's worth: a few MB at most
        except ResourceNotFoundError:
            continue  # an optional part (e.g. deletions) this run did not write
        block_id = base64.b64encode(f"part-{index:08d}".encode()).decode()
        target.stage_block(block_id, data, length=len(data))
        block_ids.append(block_id)
    target.commit_block_list(
        [BlobBlock(block_id=b) for b in block_ids],
        content_settings=ContentSettings(content_type="application/gzip"),
    )


def latest_name(directory: str, prefix: str) -> str:
    """Where the latest successful backup of ``directory`` (with ``prefix``) is recorded."""
    key = hashlib.sha256(f"{directory}\n{prefix}".encode("utf-8", "surrogateescape")).hexdigest()
    return f"{CONTROL_PREFIX}latest/{key[:32]}.json"


def write_latest(client: ContainerClient, directory: str, prefix: str, record: dict) -> None:
    record = {"directory": directory, "prefix": prefix, **record}
    client.upload_blob(latest_name(directory, prefix), json.dumps(record), overwrite=True)


def read_latest(client: ContainerClient, directory: str, prefix: str) -> dict | None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return json.loads(client.download_blob(latest_name(directory, prefix)).readall())
    except ResourceNotFoundError:
        return None


def distrust_latest(client: ContainerClient, directory: str, prefix: str, manifest: str,
                    reason: str) -> None:
    """Mark ``manifest`` (if it is the latest) as not matching the container any more.

    The next backup then lists the container instead of trusting the manifest, and re-uploads
    whatever is missing or altered; restores still find the manifest.
    """
    latest = read_latest(client, directory, prefix)
    if latest and latest.get("manifest") == manifest:
        latest["listing_required"] = reason
        client.upload_blob(latest_name(directory, prefix), json.dumps(latest), overwrite=True)


def write_listing(client: ContainerClient, blob_name: str, entries: Iterable[FileEntry]) -> None:
    """Store a batch's file entries as a part: ``[rel, size, mtime_ns, stored_md5, stored_mtime]``."""
    with PartWriter(client, blob_name) as part:
        for e in entries:
            part.write([e.rel, e.size, e.mtime_ns, e.stored_md5, e.stored_mtime_ns])


def read_listing(client: ContainerClient, blob_name: str) -> list[FileEntry]:
    """Read back what ``write_listing`` stored."""
    return [FileEntry(*record) for record in read_part(client, blob_name)]
