"""Content-addressed blob storage (raw mails, attachments), reference-counted in the database.

The bytes go through a `BlobStore` (a folder by default); the `blobs` table counts the
rows that use each blob, so erasing one ticket never breaks another. Bytes are written
and synced *before* the database row that refers to them is committed: a crash leaves at
worst an unreferenced file, never a row without its bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import Executable, delete, event, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from maild.errors import StorageUnavailable
from maild.models import Attachment, Blob, InboundMessage, OutboxMail
from maild.progress import Progress


class BlobStore(Protocol):
    def put(self, data: bytes, *, sync: bool = True) -> str:
        """Store `data`; with sync=False it is durable only after the next `sync()`."""
        ...

    def sync(self) -> None: ...
    def adopt(self, sha256s: Iterable[str]) -> None: ...
    def exists(self, sha256: str) -> bool: ...
    def get(self, sha256: str) -> bytes: ...
    def delete(self, sha256: str) -> None: ...


_HEX = frozenset("0123456789abcdef")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FolderStore:
    """Blobs as files `<root>/ab/<sha256>`, written atomically and synced.

    One level of 256 folders: they all exist after a few hundred blobs, so storing one
    is a file write, not also a folder to create (which costs more than the write on some
    disks), and a million blobs are ~4,000 per folder. Stores written before 2026-12 put
    blobs two levels deep (`ab/cd/<sha256>`); those are still found, kept and listed where
    they are, never written there again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._unsynced: set[Path] = set()

    def _path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not _HEX.issuperset(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def _legacy(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def _found(self, sha256: str) -> Path | None:
        """Where the blob is, in either layout; None when it is not stored."""
        return next((p for p in (self._path(sha256), self._legacy(sha256)) if p.exists()),
                    None)

    def path_of(self, sha256: str) -> Path:
        """Where the blob is (or would be written)."""
        return self._found(sha256) or self._path(sha256)

    def put(self, data: bytes, *, sync: bool = True) -> str:
        sha = digest(data)
        found = self._found(sha)
        if found is not None:
            _touch(found)  # in use again: `collect` spares it for its grace period
            return sha
        path = self._path(sha)
        try:
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            except FileNotFoundError:  # the first blob in this folder
                private_dir(path.parent)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    if sync:
                        fh.flush()
                        os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            if sync:
                _fsync(path.parent)
            else:
                self._unsynced.add(path)
        except OSError as exc:
            raise StorageUnavailable(f"blob store {self.root}: {exc.strerror or exc}") from exc
        return sha

    def sync(self) -> None:
        """Make every blob written with sync=False durable: one syncfs(2) where there is one."""
        pending = set(self._unsynced)  # another thread may add to it meanwhile
        if not pending:
            return
        try:
            if not _syncfs(self.root):
                for path in {*pending, *(p.parent for p in pending)}:
                    _fsync(path)
        except OSError as exc:
            raise StorageUnavailable(f"blob store {self.root}: {exc.strerror or exc}") from exc
        self._unsynced.difference_update(pending)

    def adopt(self, sha256s: Iterable[str]) -> None:
        """Blobs another process (the parse worker) wrote here with sync=False: made
        durable by the next `sync()`."""
        self._unsynced.update(self.path_of(sha) for sha in sha256s)

    def exists(self, sha256: str) -> bool:
        return self._found(sha256) is not None

    def get(self, sha256: str) -> bytes:
        try:
            return self._path(sha256).read_bytes()
        except FileNotFoundError:
            return self._legacy(sha256).read_bytes()

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)
        self._legacy(sha256).unlink(missing_ok=True)

    def files(self) -> Iterator[tuple[Path, float]]:
        """Every file in the store (blobs and leftover temporary files, in either layout)
        with its mtime."""
        try:
            tops = sorted(e.path for e in os.scandir(self.root)
                          if len(e.name) == 2 and e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return
        for top in tops:  # (a symlinked folder is not the store's: never followed)
            yield from _files_in(Path(top), deeper=True)


def _files_in(folder: Path, *, deeper: bool) -> Iterator[tuple[Path, float]]:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):  # deleted meanwhile, or a stray file
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if deeper and len(entry.name) == 2:  # the older, two-level layout
                    yield from _files_in(Path(entry.path), deeper=False)
            elif entry.is_file(follow_symlinks=False):
                yield Path(entry.path), entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:  # deleted meanwhile
            continue


def is_blob_name(name: str) -> bool:
    """A stored blob's file name (not a temporary file)."""
    return len(name) == 64 and _HEX.issuperset(name)


def private_dir(path: Path) -> None:
    """Create `path` and its missing parents as 0700 whatever the umask; leave existing
    folders as they are (an operator's or systemd's choice)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another process
            continue
        os.chmod(folder, 0o700)


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass  # read-only or gone: the next write will say so


def _syncfs(root: Path) -> bool:
    """syncfs(2) on the filesystem holding `root`; False where the C library lacks it."""
    libc = _libc()
    if libc is None or not hasattr(libc, "syncfs"):
        return False
    fd = os.open(root, os.O_RDONLY)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
    return True


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def _fsync(path: Path) -> None:
    """fsync a file or a folder (a folder's entry list is made durable this way)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def add_ref(session: Session, sha256: str, size: int, now: datetime) -> None:
    """Count one more user of blob `sha256` (creating its row on first use)."""
    add_refs(session, [(sha256, size)], now)


def add_refs(session: Session, blobs: Iterable[tuple[str, int]], now: datetime) -> None:
    """Count one more user per (sha256, size) of `blobs`, in one statement. It runs at
    once, on the session's connection: no flush of the session's pending rows (those
    that refer to these blobs are written after, so the foreign keys hold)."""
    counted = Counter(blobs)
    if not counted:
        return
    connection = session.connection()
    connection.execute(_add_ref(connection.dialect.name), [
        {"sha256": sha, "size": size, "refs": n, "created_at": now}
        for (sha, size), n in counted.items()])


@functools.cache
def _add_ref(dialect: str) -> Executable:
    """`INSERT … ON CONFLICT DO UPDATE refs = refs + n`, built once per dialect (it is on
    every mail's path; the values come as parameters)."""
    module = postgresql if dialect == "postgresql" else sqlite
    insert = module.insert(Blob)
    stmt: Executable = insert.on_conflict_do_update(
        index_elements=[Blob.sha256], set_={"refs": Blob.refs + insert.excluded.refs})
    return stmt


def unref(session: Session, shas: Iterable[str | None]) -> list[str]:
    """Count one use less per sha; the blobs nobody uses any more (their rows deleted):
    the caller deletes their files after the commit."""
    orphaned = []
    for sha, count in Counter(s for s in shas if s).items():
        session.execute(update(Blob).where(Blob.sha256 == sha).values(refs=Blob.refs - count))
        if (session.scalar(select(Blob.refs).where(Blob.sha256 == sha)) or 0) <= 0:
            session.execute(delete(Blob).where(Blob.sha256 == sha))
            orphaned.append(sha)
    return orphaned


def stage(session: Session, store: BlobStore, data: bytes, now: datetime) -> str:
    """Store `data` for a row this session is about to commit, and count the reference:
    the bytes are written at once and made durable before the session commits (one sync
    for all blobs staged in a transaction). A rollback or a crash before the commit
    leaves an unreferenced file, which `collect` deletes after its grace."""
    sha = store.put(data, sync=False)
    add_ref(session, sha, len(data), now)
    sync_before_commit(session, store)
    return sha


def stage_for(session: Session, store: BlobStore, row: object, data: bytes,
              now: datetime) -> str:
    """`stage`, for `row`, a row added to `session` that refers to the blob: its
    reference is counted when the row is written, with those of every row written in the
    same flush (one statement, before theirs). A row a rolled-back savepoint took away
    counts nothing. For new bytes only (a mail we made): an existing blob's count must be
    taken at once (`add_ref`), so its row is locked against a concurrent purge."""
    sha = store.put(data, sync=False)
    add_ref_for(session, row, sha, len(data), now)
    sync_before_commit(session, store)
    return sha


def add_ref_for(session: Session, row: object, sha256: str, size: int,
                now: datetime) -> None:
    """`add_ref` when `row` (added to `session`, referring to `sha256`) is written."""
    pending: list[tuple[object, str, int, datetime]] | None = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = []
        event.listen(session, "before_flush", _count_pending)
    pending.append((row, sha256, size, now))


def _count_pending(session: Session, _context: object, _instances: object) -> None:
    pending: list[tuple[object, str, int, datetime]] = session.info.get(_PENDING, [])
    if not pending:
        return
    new = session.new
    due = [(sha, size, now) for row, sha, size, now in pending if row in new]
    pending.clear()
    if due:
        add_refs(session, [(sha, size) for sha, size, _ in due], due[-1][2])


_PENDING = "maild.blobs.pending_refs"  # session.info: (row, sha256, size, now) not counted


def sync_before_commit(session: Session, store: BlobStore) -> None:
    """Make the store's unsynced blobs durable just before `session` commits (once per
    commit, whatever was written with sync=False meanwhile: one syncfs for all)."""
    if _SYNC_HOOK in session.info:
        return
    session.info[_SYNC_HOOK] = True

    def sync(committing: Session) -> None:
        if not committing.in_nested_transaction():  # a savepoint commits nothing yet
            store.sync()
    event.listen(session, "before_commit", sync)


_SYNC_HOOK = "maild.blobs.sync_before_commit"


def collect(session: Session, store: FolderStore, older_than: datetime,
            progress: Progress | None = None) -> list[Path]:
    """Delete the files no row refers to (attachments of mails that were rejected, bounced
    or our own: written before the decision; crash leftovers) once modified before
    `older_than`, the grace that spares a mail in flight; returns what was deleted."""
    used = {*session.scalars(select(Blob.sha256).where(Blob.refs > 0)),
            *session.scalars(select(InboundMessage.raw_sha256)),
            *session.scalars(select(Attachment.blob_sha256)),
            *session.scalars(select(OutboxMail.raw_sha256))}
    cutoff = older_than.timestamp()
    deleted = []
    for path, mtime in store.files():
        if progress is not None:
            progress.step()
        if mtime < cutoff and path.name not in used:
            path.unlink(missing_ok=True)
            deleted.append(path)
    return deleted
