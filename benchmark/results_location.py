"""Where results live: a local folder, or a folder on any file system ``pyarrow.fs`` reaches by URI.

``--results`` takes a path (``leaderboards``, ``/data/res``, ``C:\\res``) or a URI: ``s3://bucket/prefix``,
``gs://bucket/prefix``, ``hdfs://…``, ``abfs://…``, ``file:///abs/path``. A path stays a
:class:`~pathlib.Path` and everything behaves as it always has. A URI becomes a :class:`RemoteFolder`,
which offers the few ``Path`` operations the store and the leaderboard use (``/``, ``name``,
``is_dir``, ``is_file``, ``glob``, ``read_bytes``, ``write_bytes``), so those modules take either.

An object store's put is atomic, so a file written there with one :meth:`RemoteFolder.write_bytes`
appears whole or not at all: no temporary-and-rename is needed (nor possible: S3 has no rename).
Credentials and endpoints come from the store's usual environment (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for a non-AWS server; for GCS: application-default
credentials), on the driver and on every Ray worker, which writes its own runs.

pyarrow is imported only when a URI is met, so ``synapsebench --help`` stays light.
"""

from __future__ import annotations

import fnmatch
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.errors import SpecError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
"""A URI's scheme: two characters at least, so that a Windows drive (``C:/res``) stays a path."""

SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")
"""The schemes ``pyarrow.fs.FileSystem.from_uri`` knows (``file`` is a local folder)."""


@dataclass(frozen=True)
class RemoteFolder:
    """A folder (or file) on a ``pyarrow.fs`` file system, named like a ``Path``.

    ``path`` is the file system's own path (``bucket/prefix/suite``); ``query`` keeps the URI's
    options (``?endpoint_override=…``) so that :attr:`uri` rebuilds the same file system elsewhere.
    """

    scheme: str
    path: str
    query: str = ""
    fs: pafs.FileSystem = field(compare=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.fs is None:
            object.__setattr__(self, "fs", _filesystem(self.uri))

    @property
    def uri(self) -> str:
        """The URI that :func:`parse` turns back into this folder (with its options)."""
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}"

    def __truediv__(self, name: str) -> RemoteFolder:
        return RemoteFolder(self.scheme, f"{self.path.rstrip('/')}/{name}", self.query, self.fs)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0] if "." in self.name else self.name

    @property
    def parent(self) -> RemoteFolder:
        return RemoteFolder(self.scheme, self.path.rstrip("/").rsplit("/", 1)[0], self.query, self.fs)

    def _type(self) -> Any:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return bool(self._type() != pafs.FileType.NotFound)

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return bool(self._type() == pafs.FileType.Directory)

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return bool(self._type() == pafs.FileType.File)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Make the folder (an object store needs none: a key's prefix is its folder)."""
        self.fs.create_dir(self.path, recursive=parents)

    def iterdir(self) -> Iterator[RemoteFolder]:
        import pyarrow.fs as pafs

        for info in self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True)):
            yield RemoteFolder(self.scheme, info.path, self.query, self.fs)

    def glob(self, pattern: str) -> Iterator[RemoteFolder]:
        """The entries matching ``pattern``, one ``fnmatch`` pattern per ``/``-separated part."""
        head, _, rest = pattern.partition("/")
        for entry in self.iterdir():
            if fnmatch.fnmatchcase(entry.name, head):
                if not rest:
                    yield entry
                elif entry.is_dir():
                    yield from entry.glob(rest)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return bytes(stream.read())

    def write_bytes(self, data: bytes) -> int:
        """Write the whole file with one put: it appears whole or not at all."""
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(data)
        return len(data)


Location = Path | RemoteFolder
"""Where results live: a local folder or a folder on a remote file system."""


def _filesystem(uri: str) -> pafs.FileSystem:
    import pyarrow.fs as pafs

    filesystem, _ = pafs.FileSystem.from_uri(uri)
    return filesystem


def parse(value: str | Path | RemoteFolder) -> Location:
    """``--results`` as a location: a URI on a known scheme, else a local path. Does no I/O.

    Raises:
        SpecError: a URI whose scheme ``pyarrow.fs`` does not know: it is never taken for a folder.
    """
    if isinstance(value, Path | RemoteFolder):
        return value
    match = _SCHEME.match(value)
    if match is None:
        return Path(value)
    scheme = match.group(1).lower()
    if scheme == "file":
        return Path(value[len("file://") :])
    expected = "a folder, or a URI that pyarrow.fs knows (" + ", ".join(f"{s}://" for s in SCHEMES) + ")"
    if scheme not in SCHEMES:
        raise SpecError(None, "--results", expected, value)
    rest, _, query = value[match.end() :].partition("?")
    try:
        return RemoteFolder(scheme, rest.rstrip("/"), query)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise SpecError(None, "--results", expected, f"{value} ({exc})") from None


def check_reachable(results: Location) -> None:
    """A remote folder must answer with the credentials at hand: bad input (exit 2) otherwise."""
    if isinstance(results, RemoteFolder):
        try:
            results.exists()
        except OSError as exc:
            # pyarrow prefixes the store's answer with the key it asked about; the answer is what helps.
            answer = re.sub(r"^When [^:]*: ", "", str(exc))
            raise SpecError(
                None, "--results", "a store reachable with the credentials in the environment", answer
            ) from None


def as_text(results: Location) -> str:
    """The location as a string that :func:`parse` turns back into it (a Ray worker's config)."""
    return results.uri if isinstance(results, RemoteFolder) else str(results)


def resolved(results: Location) -> Location:
    """An absolute location: a local path resolved from the working folder; a URI as it is."""
    return Path(results).resolve() if isinstance(results, Path) else results


@contextmanager
def local_folder(folder: Location) -> Iterator[Path]:
    """A local folder to write into that ends up at ``folder``: ``folder`` itself when local, else
    a scratch folder whose files are put one by one under ``folder`` when the block ends well."""
    if isinstance(folder, Path):
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="sb_stage_") as scratch:
        yield Path(scratch)
        for path in sorted(Path(scratch).rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                target = folder
                for part in path.relative_to(scratch).parts:
                    target = target / part
                target.write_bytes(path.read_bytes())
