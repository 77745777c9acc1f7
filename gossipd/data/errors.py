"""The one error every data loader raises, and the checked file access that raises it."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data file (or custom loading function) is unusable. The message names it and says what is wrong:
    `train.csv: row 17 (line 18): column 'Age': found 'abc', expected a number`."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")

    def __reduce__(self) -> tuple[type[DataError], tuple[str, str]]:
        # Exceptions pickle as `cls(*args)`; ours takes two arguments, not the one formatted message.
        return (DataError, (self.source, self.problem))


def data_path(name: str, base_dir: Path) -> Path:
    """A path from a `[data]` table: `~` expanded, relative ones taken from the data root."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else base_dir / path


def checked_size(path: Path, limit: int) -> int:
    """The size of regular file `path`, refused when missing, not a file, or over `limit` bytes."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror or exc}") from None
    if not path.is_file():
        raise DataError(path, "not a regular file")
    if stat.st_size > limit:
        raise DataError(path, f"file is {stat.st_size:,} bytes, expected at most {limit:,}")
    return stat.st_size


def read_bounded(path: Path, limit: int) -> bytes:
    """The whole content of `path`, refused when it is over `limit` bytes (even if it grew after stat)."""
    size = checked_size(path, limit)
    try:
        with path.open("rb") as handle:
            # One byte past the stat size notices a file that grew; never more than limit + 1 in any case.
            data = handle.read(min(size, limit) + 1)
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > size:
        raise DataError(path, "file grew while it was being read")
    return data
