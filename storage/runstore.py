"""Where a run directory lives: a local folder, a shared file system, or an object store (``s3://``, ``gs://``).

On a cluster whose machines share no file system, Ray Tune copies nothing to the head node (Ray >= 2.7): every
file a trial reads or writes must be on storage that every node reaches. :class:`RunStore` is the one door to
a run directory, for the driver, the trials on any node and the report alike. It speaks ``pyarrow.fs``, the
layer Ray Tune itself uses for ``storage_path``, so one location string serves the ledger, Tune's checkpoints,
the Parquet tables, the Optuna search state and the report.

A location is a local path (``runs``, ``/mnt/nfs/runs``) or a URI with the query parameters pyarrow accepts
(``s3://bucket/prefix?endpoint_override=http://127.0.0.1:9000&region=us-east-1``). Credentials come from each
node's own environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, an instance profile ...); they are
never written into a run directory.

Guarantees: every write is atomic for readers (a temporary file renamed into place on a file system; a single
PUT, visible only once complete, on an object store), so a crash never leaves half a file; files are created
with the process umask (group-readable by default), as any other tool's output.
"""

from __future__ import annotations

import errno
import io
import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow.fs as pafs

from mmlo.storage.layout import TUNE_DIR

#: Query parameters of a storage URI that hold credentials (pyarrow's S3 and GCS options): never printed.
SECRET_PARAMETERS = frozenset({"access_key", "secret_key", "session_token", "access_token", "credentials"})


class StorageError(Exception):
    """A run location that cannot be opened or reached; the message says which and why (the CLI prints it
    and exits with code 2)."""


class StorageFull(StorageError):
    """The storage under a run directory filled up (or hit its quota) while a study wrote to it."""


#: errno values of a full file system and of an exhausted quota.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: How those errors read once Ray or Tune has turned them into text (a trial's error, a TuneError).
_FULL_WORDS = ("no space left on device", "disk quota exceeded", "[errno 28]", "[errno 122]")


def storage_full(err: BaseException | str) -> bool:
    """Whether an error (or an error's text, as Ray reports a trial's) comes from full storage: an OSError
    with ENOSPC or EDQUOT anywhere in its chain of causes, or those words in its message."""
    seen: set[int] = set()
    current: BaseException | str | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, str):
            return any(word in current.lower() for word in _FULL_WORDS)
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        if any(word in str(current).lower() for word in _FULL_WORDS):
            return True
        current = current.__cause__ or current.__context__
    return False


def is_uri(location: str | Path) -> bool:
    """True for ``scheme://...`` locations other than ``file://``; plain paths are local."""
    text = str(location)
    scheme = urlsplit(text).scheme
    return "://" in text and len(scheme) > 1 and scheme != "file"


def normalise_location(location: str | Path) -> str:
    """A local path made absolute (``~`` expanded); a URI as given. Opens nothing (no network)."""
    text = str(location)
    if is_uri(text):
        return text
    return str(Path(text.removeprefix("file://")).expanduser().resolve())


def join_location(location: str, name: str) -> str:
    """The location of the sub-folder ``name`` (a URI keeps its query parameters). Opens nothing."""
    if not is_uri(location):
        return str(Path(location) / name)
    parts = urlsplit(location)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))


def jsonable(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class RunStore:
    """A folder (``root``) on a pyarrow file system, named by ``uri`` (a local path or a storage URI)."""

    uri: str
    fs: pafs.FileSystem
    root: str

    @classmethod
    def open(cls, location: RunStore | str | Path) -> RunStore:
        """The store at ``location``; a local path is made absolute (``~`` expanded)."""
        if isinstance(location, RunStore):
            return location
        text = normalise_location(location)
        if not is_uri(text):
            return cls(text, pafs.LocalFileSystem(), text)
        try:
            fs, root = pafs.FileSystem.from_uri(text)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad URI
            raise StorageError(f"{shown(text)}: not a storage location pyarrow can open ({err})") from None
        return cls(text, fs, root.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def local_path(self) -> Path | None:
        """The folder on this machine's file system, or None on an object store."""
        return Path(self.root) if self.is_local else None

    @property
    def name(self) -> str:
        return self.root.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return shown(self.uri)

    def child(self, name: str) -> RunStore:
        """The store of the sub-folder ``name`` (a URI keeps its query parameters)."""
        if self.is_local:
            path = str(Path(self.root) / name)
            return RunStore(path, self.fs, path)
        return RunStore(join_location(self.uri, name), self.fs, f"{self.root}/{name}")

    def path(self, rel: str = "") -> str:
        """``rel`` as a path on ``fs``."""
        return f"{self.root}/{rel}" if rel else self.root

    def where(self, rel: str = "") -> str:
        """``rel`` as a user reads it (and can give back to mmlo): a local path, or a URI."""
        if self.is_local:
            return self.path(rel)
        return shown(join_location(self.uri, rel) if rel else self.uri)

    # -- reading -------------------------------------------------------------------------------------------
    def exists(self, rel: str = "") -> bool:
        return self._info(rel).type != pafs.FileType.NotFound

    def is_dir(self, rel: str = "") -> bool:
        if not self.is_local:
            # An object store has no folders: a prefix "exists" when something is under it.
            return bool(self.list(rel, limit=1))
        return self._info(rel).type == pafs.FileType.Directory

    def read_bytes(self, rel: str) -> bytes | None:
        """The file's content, or None when it does not exist."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as handle:
                return bytes(handle.read())
        except FileNotFoundError:
            return None
        except OSError as err:
            if _not_found(err):
                return None
            raise

    def read_text(self, rel: str) -> str | None:
        data = self.read_bytes(rel)
        return None if data is None else data.decode("utf-8", errors="replace")

    def read_json(self, rel: str) -> Any:
        """The parsed JSON file, or None when it does not exist; ``json.JSONDecodeError`` when damaged."""
        text = self.read_text(rel)
        return None if text is None else json.loads(text)

    def mtime(self, rel: str) -> float | None:
        info = self._info(rel)
        return None if info.mtime is None else info.mtime.timestamp()

    def list(self, rel: str = "", *, limit: int | None = None) -> list[str]:
        """Files under ``rel`` (recursively), as paths relative to the store's root, sorted."""
        selector = pafs.FileSelector(self.path(rel), recursive=True, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except FileNotFoundError:
            return []
        prefix = self.root + "/"
        files = sorted(i.path.removeprefix(prefix) for i in infos if i.type == pafs.FileType.File)
        return files[:limit] if limit is not None else files

    # -- writing -------------------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a file atomically: readers see the old content or the new one, never a part."""
        target = self.path(rel)
        if not self.is_local:
            with self.fs.open_output_stream(target) as handle:
                handle.write(data)
            return
        parent = target.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{target.rsplit('/', 1)[-1]}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with self.fs.open_output_stream(tmp) as handle:
                handle.write(data)
            self.fs.move(tmp, target)
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass
            raise

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, data: Any) -> None:
        self.write_text(rel, json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")

    def append_text(self, rel: str, text: str) -> None:
        """Append to a file: one ``write`` on a file system (a crash tears at most the last line); on an
        object store, which cannot append, the file is rewritten whole (its single writer is one trial)."""
        if self.is_local:
            target = Path(self.path(rel))
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("a", encoding="utf-8") as handle:
                handle.write(text)
            return
        self.write_text(rel, (self.read_text(rel) or "") + text)

    def delete(self, rel: str) -> None:
        """Remove a file or a whole folder; nothing happens when it is absent."""
        info = self._info(rel)
        try:
            if info.type == pafs.FileType.File:
                self.fs.delete_file(self.path(rel))
            elif info.type == pafs.FileType.Directory or not self.is_local:
                for file in self.list(rel):
                    self.fs.delete_file(self.path(file))
                if info.type == pafs.FileType.Directory:
                    self.fs.delete_dir(self.path(rel))
        except FileNotFoundError:
            pass

    # -- folders between this machine and the store --------------------------------------------------------
    def upload_dir(self, local: Path, rel: str) -> None:
        for file in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            self.write_bytes(f"{rel}/{file.relative_to(local).as_posix()}", file.read_bytes())

    def download_dir(self, rel: str, local: Path) -> Path:
        """Copy the folder ``rel`` to ``local``; returns ``local``."""
        prefix = self.path(rel) + "/"
        for file in self.list(rel):
            target = Path(local) / self.path(file).removeprefix(prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read_bytes(file) or b"")
        return Path(local)

    # -- for Ray Tune --------------------------------------------------------------------------------------
    def tune_storage(self) -> tuple[str, pafs.FileSystem | None]:
        """``(storage_path, storage_filesystem)`` for Tune's RunConfig: Tune's folder inside this store."""
        if self.is_local:
            return self.path(TUNE_DIR), None
        return self.path(TUNE_DIR), self.fs

    def check_reachable(self) -> None:
        """Fail with a clear message when the store cannot be listed (no credentials, a wrong endpoint, a
        bucket that does not exist)."""
        try:
            self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False, allow_not_found=True))
            if not self.is_local:
                bucket = self.root.split("/", 1)[0]
                if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                    raise StorageError(f"{self}: the bucket '{bucket}' does not exist; create it first")
        except StorageError:
            raise
        except Exception as err:  # noqa: BLE001 - pyarrow's S3 errors are plain OSErrors with the reason
            raise StorageError(f"{self}: storage not reachable from {_node()}: {first_line(err)}") from None

    def _info(self, rel: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path(rel))


def _not_found(err: OSError) -> bool:
    text = str(err)
    return "NoSuchKey" in text or "Path does not exist" in text or "not found" in text.lower()


def shown(uri: str) -> str:
    """A location as printed and recorded: a URI keeps its query (the endpoint a user needs to read it back)
    but never a credential someone put there."""
    if not is_uri(uri):
        return uri
    parts = urlsplit(uri)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in SECRET_PARAMETERS]
    return urlunsplit(parts._replace(query=urlencode(kept, safe=":/"), fragment=""))


def _node() -> str:
    import socket

    return socket.gethostname()


def first_line(err: BaseException) -> str:
    """The first line of an error's message (or its type), for one-line messages."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_parquet(store: RunStore, rel: str) -> Any:
    """A Parquet table of the store as a polars frame, or None when the file does not exist."""
    import polars as pl

    data = store.read_bytes(rel)
    return None if data is None else pl.read_parquet(io.BytesIO(data))


def write_parquet(store: RunStore, rel: str, frame: Any) -> None:
    """Write a polars frame as Parquet, atomically."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    store.write_bytes(rel, buffer.getvalue())

