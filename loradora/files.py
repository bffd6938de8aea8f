"""Files written whole or not at all: a crash, a full disk or Ctrl-C never leaves half a file.

Every file a run writes goes through here (``write_atomic``, or ``append_line`` for metrics.jsonl),
so one exception, ``WriteFailed``, says that a write failed and which file it was: the run reports
it in one line, and the last good version of the file is still there.
"""

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path


class WriteFailed(RuntimeError):
    """A file could not be written (a full disk, a read-only folder); the message names it."""

    def __init__(self, path: Path, error: OSError):
        super().__init__(f"cannot write {path}: {error.strerror or error}")
        self.path, self.error = path, error


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside ``path`` (making its folder) then rename it over ``path``."""
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
            try:
                tmp.write(data)
                tmp.close()
                os.chmod(tmp.name, 0o644)  # temporary files are private (0600); results are to share
                os.replace(tmp.name, path)
            except BaseException:
                os.unlink(tmp.name)
                raise
    except OSError as error:
        raise WriteFailed(path, error) from error


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline in a single write, so no line is ever half there."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(descriptor, (line + "\n").encode())
        finally:
            os.close(descriptor)
    except OSError as error:
        raise WriteFailed(path, error) from error
    if written != len(line.encode()) + 1:  # a short write: what a nearly full disk does
        raise WriteFailed(path, OSError(28, f"wrote {written} of {len(line.encode()) + 1} bytes"))


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON; dataclasses in it (the typed results) are written as their fields."""
    write_atomic(path, json.dumps(data, indent=2, default=as_json) + "\n")


def as_json(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class Damaged(Exception):
    """A checked file that cannot be read, or whose content is not what was written; says why."""


def write_checked(path: Path, payload: bytes, label: str) -> None:
    """``payload`` after a line naming it (``label``) and holding its SHA-256, written atomically, so
    that a file cut short (a full disk, a killed copy) or changed is found before it is loaded."""
    write_atomic(path, checksum_line(label, payload) + payload)


def read_checked(path: Path, label: str) -> bytes:
    """The payload ``write_checked`` wrote at ``path``; Damaged when it cannot be read or its
    checksum does not match."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise Damaged(f"cannot be read: {error.strerror}") from None
    first, _, payload = data.partition(b"\n")
    if first + b"\n" != checksum_line(label, payload):
        raise Damaged("its checksum does not match: truncated or changed since it was written")
    return payload


def checksum_line(label: str, payload: bytes) -> bytes:
    return f"loradora {label}, sha256 {hashlib.sha256(payload).hexdigest()}\n".encode()


def read_json_or_none(path: Path):
    """The JSON at ``path``; None when there is no such file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
