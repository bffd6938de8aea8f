"""Files written whole or not at all: a crash, a full disk or Ctrl-C never leaves half a file."""

import dataclasses
import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside ``path`` then rename it, so a crash leaves no half file."""
    mode = "wb" if isinstance(data, bytes) else "w"
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        try:
            tmp.write(data)
            tmp.close()
            os.chmod(tmp.name, 0o644)  # temporary files are private (0600); results are to share
            os.replace(tmp.name, path)
        except BaseException:
            os.unlink(tmp.name)
            raise


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON; dataclasses in it (the typed results) are written as their fields."""
    write_atomic(path, json.dumps(data, indent=2, default=as_json) + "\n")


def as_json(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
