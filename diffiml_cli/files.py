"""File safety: atomic writes, the temporaries a killed writer leaves, durable appends, and locks.

Every file diffiml writes under a final name is written to `.<name>.<random>.tmp` beside it, flushed, fsynced
and renamed over the name, so a reader never sees half a file; the folder is fsynced after the rename, so that a
power loss does not undo it. A writer killed mid-write leaves only such a temporary, which
`remove_stale_temporaries` deletes before the next write of that name. Records that must survive a kill are
appended whole, one line per record, and fsynced (`append_lines`). Two processes that share
a folder take `locked(folder / LOCK_NAME)` around what must not interleave.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from diffiml_cli.errors import DiffimlError

# Errors after which nothing more can be written to that filesystem.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def _process_umask() -> int:
    umask = os.umask(0)  # the only way to read it; done once, at import, before any writer thread exists
    os.umask(umask)
    return umask


_UMASK = _process_umask()


def is_out_of_space(error: BaseException) -> bool:
    """Whether `error` means the filesystem takes no more writes (full, over quota, read-only)."""
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


NAME_MAX = 255  # bytes in one file name on ext4, XFS, APFS and NTFS alike
_TEMPORARY_SUFFIX = ".tmp"
_RANDOM_CHARACTERS = 8  # what tempfile.mkstemp puts between prefix and suffix
_TEMPORARY_TAIL = _RANDOM_CHARACTERS + len(_TEMPORARY_SUFFIX)


def _temporary_prefix(name: str) -> str:
    """`.<name>.`, or `.<hash of name>.` when that would leave no room for mkstemp's 8 random characters and
    `.tmp` within NAME_MAX."""
    if len(os.fsencode(name)) + 2 + _TEMPORARY_TAIL <= NAME_MAX:  # the two dots of the prefix
        return f".{name}."
    return f".{hashlib.sha256(os.fsencode(name)).hexdigest()[:32]}."


def temporary_beside(path: Path) -> Path:
    """A new, empty, private temporary file `.<name>.<random>.tmp` in path's folder; the caller fills and
    renames it (see `atomic_write`). Its mode becomes the usual 0666 minus the umask once renamed."""
    fd, name = tempfile.mkstemp(prefix=_temporary_prefix(path.name), suffix=_TEMPORARY_SUFFIX, dir=path.parent)
    os.close(fd)
    return Path(name)


def _fsync_folder(folder: Path) -> None:
    """fsync a folder, so that the names created or renamed in it survive a power loss (POSIX keeps a name in its
    folder, not in the file: fsync(2)). Filesystems that cannot fsync a folder (EINVAL, ENOTSUP) are let be."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Have `write(temporary)` fill a temporary beside `path`, fsync it, rename it over `path`, then fsync the
    folder: after a power loss, `path` holds either its old contents or the new ones in full.

    On any failure before the rename the temporary is removed and the error propagates; `path` is untouched.
    """
    path = Path(path)
    temporary = temporary_beside(path)  # the folder must exist: a missing one is the caller's error
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_write`)."""

    def write(temporary: Path) -> None:
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_TRUNC), "wb") as handle:
            handle.write(data)

    atomic_write(path, write)


def remove_stale_temporaries(directory: str | Path, names: Sequence[str]) -> None:
    """Delete the `.<name>.<random>.tmp` files that a writer killed mid-write left in `directory` for each of
    `names`: one listing of the folder, whatever the number of names; a folder that does not exist has none."""
    prefixes = {_temporary_prefix(name) for name in names}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:  # mkstemp's names are <prefix><random characters><suffix>
        if entry.name.endswith(_TEMPORARY_SUFFIX) and entry.name[:-_TEMPORARY_TAIL] in prefixes:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def append_lines(path: Path, lines: Sequence[str]) -> None:
    """Append whole lines to `path` with one write, then fsync (and the folder too when this created the file):
    after a kill or a power loss, every line appended before it is there in full, and at most the last line of an
    interrupted append is cut short (readers skip it)."""
    if not lines:
        return
    data = "".join(line.rstrip("\n") + "\n" for line in lines).encode()
    try:
        fd, created = _open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL), True
    except FileExistsError:
        fd, created = _open_no_follow(path, os.O_WRONLY | os.O_APPEND), False
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_folder(Path(path).parent)


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """An exclusive POSIX lock (`fcntl.lockf`, which also works over NFS) on `lock_path`, held for the block;
    it waits for another process that holds it. The lock file itself stays (it holds nothing)."""
    try:
        fd = _open_no_follow(lock_path, os.O_RDWR | os.O_CREAT)
    except OSError as error:
        raise DiffimlError(f"{lock_path}: cannot create the lock file ({error.strerror or error})") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)


def _open_no_follow(path: Path, flags: int) -> int:
    """os.open with O_NOFOLLOW: a symbolic link planted under the name is refused (ELOOP), never followed out of
    its folder. Raises OSError."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "is a symbolic link; refusing to write through it", str(path)) from None
        raise


def sha256_of(handle: BinaryIO) -> str:
    """The SHA-256 (hex) of an open binary file's bytes from its start; the handle is left at its start."""
    handle.seek(0)
    digest = hashlib.sha256()
    while block := handle.read(1 << 20):
        digest.update(block)
    handle.seek(0)
    return digest.hexdigest()


def escapes(root: Path, path: Path) -> bool:
    """Whether writing, replacing or deleting `path` could touch anything outside the folder `root`: `path` is a
    symbolic link, or its nearest existing folder resolves (through links) outside `root`'s real path."""
    if os.path.islink(path):
        return True
    # realpath resolves the links of the part that exists and keeps the part still to be created (which cannot
    # hold a link) as written, for the root as for the path: a root not yet made is compared as it will be.
    real_root = os.path.realpath(root)
    real_folder = os.path.realpath(Path(os.path.abspath(path)).parent)
    return os.path.commonpath([real_root, real_folder]) != real_root


def require_inside(root: Path, path: Path) -> None:
    """Raise DiffimlError (one line) when `escapes(root, path)`: nothing is written outside an output folder,
    whatever links it holds."""
    if escapes(root, path):
        raise DiffimlError(f"{path}: leads outside the output folder {root} (a symbolic link); refusing to write "
                           "there")
