"""The versioned JSON files an export or engine folder carries (export.json, engine.json): write, find, read.

One home for the checks both manifests make before reading their fields: the folder exists, the file is in it,
it is JSON, its `format` is ours and its `format_version` the one this runtime reads. Each manifest brings its
own error type and the fix to name (re-export, rebuild).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class VersionedFormat:
    """One manifest file: its name in the folder, what it is, its format id and version, and how to get a good one."""

    file_name: str
    kind: str  # "manifest", "engine manifest": in messages
    format_id: str
    version: int
    error: type[Exception]
    fix: str  # how to get a good file: "re-export the checkpoint", "rebuild the folder with ..."
    version_fix: str | None = None  # the fix when only the version differs (default: `fix`)
    not_a_folder: str | None = None  # the message when the path is not a folder (None: the missing-file one)
    missing: str | None = None  # what the folder is not when the file is absent, e.g. "it is not an engine folder"

    def path(self, folder: str | Path) -> Path:
        """Where the file lives in folder."""
        return Path(folder) / self.file_name

    def write(self, folder: str | Path, data: dict[str, Any]) -> Path:
        """Write data (with its format and format_version first) into folder; returns the file's path."""
        path = self.path(folder)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return path

    def read(self, folder: str | Path) -> tuple[Path, dict[str, Any]]:
        """(path, the JSON object) of folder's file, or `error` naming the folder or file and the fix."""
        path = self.path(folder)
        if self.not_a_folder is not None and not Path(folder).is_dir():
            raise self.error(f"{folder} is not a folder: {self.not_a_folder}")
        if not path.is_file():
            raise self.error(f"{folder} has no {self.file_name}: {self.missing}; {self.fix}")
        return path, read_versioned_json(path, self)


def read_versioned_json(path: Path, spec: VersionedFormat) -> dict[str, Any]:
    """A JSON object with spec's `format` and `format_version`, or spec.error naming the file and the fix."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise spec.error(f"{path} is not valid JSON ({e}): {spec.fix}") from e
    found = data.get("format") if isinstance(data, dict) else type(data).__name__
    if found != spec.format_id:
        raise spec.error(f"{path} is not a gpt2-export {spec.kind} (format {found!r})")
    if data.get("format_version") != spec.version:
        raise spec.error(
            f"{path} has format_version {data.get('format_version')}, this runtime reads version {spec.version}: "
            f"{spec.version_fix or spec.fix}"
        )
    return data
