"""upload_batch against a live Azurite: names, bytes, MD5s and idempotency, read back from the store."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from cloud_backup.naming import blob_name_for
from cloud_backup.upload import SINGLE_PUT_MAX, BatchUploadError, upload_batch
from cloud_backup.walk import FileEntry, walk_tree
from tests.privileges import as_nobody

ODD_NAMES = [
    "with space.txt",
    "ünïcödé-日本語.txt",
    "hash#tag.txt",
    "question?.txt",
    "per%cent%20.txt",
    "(parens).txt",
    "plus+and&eq=.txt",
    "trailing.dot.",
    "tab\there.txt",
    "nested dir #1/ü (2)/x%3F.txt",
]


def _entries(root: Path) -> list[FileEntry]:
    return [e for e in walk_tree(str(root)) if isinstance(e, FileEntry)]


def _stored(container) -> dict[str, tuple[int, bytes]]:
    """Every blob (outside the run bookkeeping) with its size and bytes' MD5, read back."""
    out = {}
    for blob in container.list_blobs():
        data = container.download_blob(blob.name, decompress=False).readall()
        assert len(data) == blob.size
        out[blob.name] = (blob.size, hashlib.md5(data).digest())
    return out


def test_odd_names_round_trip_byte_for_byte(tmp_path: Path, container) -> None:
    for i, name in enumerate(ODD_NAMES):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(100 + i))
    entries = _entries(tmp_path)
    report = upload_batch(container, str(tmp_path), entries, batch=0)
    assert report.files == len(ODD_NAMES) and report.failed_count == 0
    stored = _stored(container)
    expected = {
        blob_name_for(str(tmp_path), name): (
            (tmp_path / name).stat().st_size,
            hashlib.md5((tmp_path / name).read_bytes()).digest(),
        )
        for name in ODD_NAMES
    }
    assert stored == expected
    assert report.bytes == sum(size for size, _ in expected.values())


def test_reupload_is_idempotent_and_content_md5_and_metadata_are_set(tmp_path: Path, container):
    (tmp_path / "a.txt").write_bytes(b"first")
    entries = _entries(tmp_path)
    upload_batch(container, str(tmp_path), entries, batch=0, prefix="p")
    again = upload_batch(container, str(tmp_path), entries, batch=0, prefix="p")
    assert again.files == 1 and again.bytes == 5
    props = container.get_blob_client("p/a.txt").get_blob_properties()
    assert bytes(props.content_settings.content_md5) == hashlib.md5(b"first").digest()
    assert props.metadata == {
        "cb_size": "5",
        "cb_mtime_ns": str((tmp_path / "a.txt").stat().st_mtime_ns),
    }
    assert props.content_settings.content_type == "text/plain"


def test_zero_byte_and_block_uploaded_files(tmp_path: Path, container) -> None:
    (tmp_path / "empty").write_bytes(b"")
    big = os.urandom(SINGLE_PUT_MAX * 2 + 12345)  # over the single-put size: staged blocks
    (tmp_path / "big.bin").write_bytes(big)
    report = upload_batch(container, str(tmp_path), _entries(tmp_path), batch=0, prefix="x")
    assert (report.files, report.bytes) == (2, len(big))
    stored = _stored(container)
    assert stored == {"x/empty": (0, hashlib.md5(b"").digest()),
                      "x/big.bin": (len(big), hashlib.md5(big).digest())}
    props = container.get_blob_client("x/big.bin").get_blob_properties()
    # The SDK stores no Content-MD5 for block uploads (FACTS.md); we set it at commit.
    assert base64.b64encode(bytes(props.content_settings.content_md5)) == base64.b64encode(
        hashlib.md5(big).digest()
    )


def test_vanished_and_unnameable_files_are_reported_not_fatal(tmp_path: Path, container) -> None:
    (tmp_path / "keep").write_bytes(b"k")
    (tmp_path / "gone").write_bytes(b"g")
    os.close(os.open(os.fsencode(tmp_path) + b"/caf\xf1", os.O_CREAT | os.O_WRONLY))
    entries = _entries(tmp_path)
    (tmp_path / "gone").unlink()
    report = upload_batch(container, str(tmp_path), entries, batch=3, prefix="v")
    assert (report.files, report.bytes) == (1, 1)
    assert report.vanished == ["gone"]
    assert report.skipped == [["caf\\xf1", "file name is not valid UTF-8"]]
    assert set(_stored(container)) == {"v/keep"}


@pytest.mark.parametrize("change", ["grow", "replace"])
def test_file_changing_between_listing_and_upload_is_stored_as_it_is_now(
    tmp_path: Path, container, change: str
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    entries = _entries(tmp_path)
    if change == "grow":
        path.write_bytes(b"old and more")
    else:
        (tmp_path / "f.new").write_bytes(b"new!")
        (tmp_path / "f.new").rename(path)
    report = upload_batch(container, str(tmp_path), entries, batch=0, prefix="c")
    now = path.read_bytes()
    assert report.bytes == len(now)
    assert _stored(container) == {"c/f": (len(now), hashlib.md5(now).digest())}


@pytest.mark.parametrize("change", ["delete", "replace"])
def test_large_file_deleted_or_replaced_while_read_is_vanished_or_read_anew(
    tmp_path: Path, container, monkeypatch, change: str
) -> None:
    """A helper's find: unlinking a file mid-read changed its ctime, and the retry re-read the
    deleted inode from the open descriptor and stored it as "uploaded"."""
    import cloud_backup.upload as upload

    path = tmp_path / "big"
    path.write_bytes(os.urandom(SINGLE_PUT_MAX + 1))  # block upload
    entries = _entries(tmp_path)
    real_preadv, done = os.preadv, []

    def preadv_then_change(fd, buffers, offset):
        if not done:  # once, during the first block read
            done.append(True)
            if change == "delete":
                path.unlink()
            else:
                (tmp_path / "big.new").write_bytes(b"new bytes")
                (tmp_path / "big.new").rename(path)
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(upload.os, "preadv", preadv_then_change)
    report = upload_batch(container, str(tmp_path), entries, batch=0, prefix="d")
    if change == "delete":
        assert report.vanished == ["big"]
        assert (report.files, report.bytes) == (0, 0)
        assert _stored(container) == {}
    else:
        assert (report.files, report.bytes) == (1, len(b"new bytes"))
        assert _stored(container) == {"d/big": (9, hashlib.md5(b"new bytes").digest())}


def test_compressed_files_are_stored_as_is_without_content_encoding(tmp_path: Path, container):
    """Regression: a .gz stored with Content-Encoding: gzip came back decompressed on download."""
    import gzip

    packed = gzip.compress(b"log line\n" * 1000)
    (tmp_path / "app.log.gz").write_bytes(packed)
    upload_batch(container, str(tmp_path), _entries(tmp_path), batch=0, prefix="z")
    blob = container.get_blob_client("z/app.log.gz")
    assert blob.get_blob_properties().content_settings.content_encoding is None
    assert blob.get_blob_properties().content_settings.content_type == "application/gzip"
    assert blob.download_blob().readall() == packed  # default download: decompress=True


def _upload_as_worker(directory: str, container_name: str):
    """Run in a child that dropped root: its own client (never one shared across a fork)."""
    from cloud_backup.store import container_client

    client = container_client("wasb_default", container_name)
    return upload_batch(client, directory, _entries(Path(directory)), batch=0, prefix="u")


def test_unreadable_file_is_skipped_with_its_reason_and_the_rest_stored(open_tmp: Path, container):
    (open_tmp / "readable.txt").write_bytes(b"ok")
    (open_tmp / "private.txt").write_bytes(b"root only")
    (open_tmp / "private.txt").chmod(0o600)
    report = as_nobody(_upload_as_worker, str(open_tmp), container.container_name)
    assert (report.files, report.bytes) == (1, 2)
    assert report.skipped == [["private.txt", "permission denied"]]
    assert set(_stored(container)) == {"u/readable.txt"}


def test_storage_failures_name_every_failed_file_and_fail_the_batch(tmp_path: Path, azurite):
    from cloud_backup.store import container_client

    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_bytes(name.encode())
    missing = container_client("wasb_default", "no-such-container-here")  # every PUT: 404
    with pytest.raises(BatchUploadError) as failed:
        upload_batch(missing, str(tmp_path), _entries(tmp_path), batch=7)
    message = str(failed.value)
    assert message.startswith("batch 7: 3 of 3 files could not be stored:")
    for name in ("a.txt", "b.txt", "c.txt"):
        assert f"'{name}': ResourceNotFoundError" in message


def test_refused_credentials_are_raised_as_such_for_the_fail_fast_policy(tmp_path: Path, azurite):
    """Regression: a refused key was wrapped in BatchUploadError, so Airflow retried it 3 times."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.storage.blob import BlobServiceClient

    from cloud_backup.local.stack import AZURITE_ACCOUNT

    wrong_key = base64.b64encode(b"not the account key" * 3).decode()
    conn = azurite.replace(azurite.split("AccountKey=")[1].split(";")[0], wrong_key)
    assert AZURITE_ACCOUNT in conn
    client = BlobServiceClient.from_connection_string(conn).get_container_client("backups")
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(ClientAuthenticationError, match="could not be stored"):
        upload_batch(client, str(tmp_path), _entries(tmp_path), batch=0)


def test_inventory_matches_the_sdk_listing_across_pages_and_odd_names(container) -> None:
    """Our raw List Blobs parsing must see exactly what the SDK's (slow) listing sees."""
    from cloud_backup.store import inventory, unpack_stored

    names = [f"p/{i:05d} #?%+&=ü日 (x).txt" for i in range(203)]
    names += ["p/tab\tname", "p/trailing.", "p/a%2Fb", "elsewhere/not-listed"]
    for name in names:
        container.upload_blob(name, b"x" * (len(name) % 7), metadata={"cb_mtime_ns": "42"})
    ours = {n: unpack_stored(v) for n, v in inventory(container, "p/", page_size=50).items()}
    sdk = {
        b.name: (b.size, 42, bytes(b.content_settings.content_md5))
        for b in container.list_blobs(name_starts_with="p/", include=["metadata"])
    }
    assert ours == sdk
    assert len(ours) == len(names) - 1
