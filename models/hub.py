"""Turn what the user passed to `from_pretrained` into a local folder: a path, or a hub id in the local cache.

References: transformers 4.57 `utils/hub.cached_files` (local paths win over hub ids), huggingface_hub's
`snapshot_download` and its cache layout (`models--org--name/refs/main`, `snapshots/<commit>/`).
The cache location and offline switch are read from the environment at call time, not at import time as
huggingface_hub's `constants` do, so a process (or test) that sets HF_HOME late still gets what it asked for.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# What huggingface_hub accepts as a repo id: `name` or `org/name`, word characters, '.', '-', at most 96.
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
# Enough to build any of our models, without pulling a repo's other formats (tf_model.h5, flax, onnx).
_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt"]
_BIN_PATTERNS = ["*.json", "pytorch_model*.bin"]


class CheckpointNotFoundError(FileNotFoundError):
    """Nothing to load where the user pointed: no folder, no cached hub snapshot, or no weights in it."""


def looks_like_repo_id(name: str) -> bool:
    """Whether a string could name a hub repository (`gpt2`, `openai-community/gpt2`)."""
    return len(name) <= 96 and bool(_REPO_ID.match(name)) and "--" not in name and ".." not in name


def hub_cache_dir() -> Path:
    """The huggingface_hub cache folder: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    env = os.environ
    folder = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not folder:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        folder = os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(folder)))


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids downloads."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """The local folder behind a path or a hub id; raises CheckpointNotFoundError saying where it looked."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointNotFoundError(
            f"{path} is a file, not a checkpoint folder: "
            "pass the folder that holds config.json and the weights"
        )
    if isinstance(name_or_path, str) and looks_like_repo_id(name_or_path):
        return cached_snapshot(name_or_path)
    raise CheckpointNotFoundError(
        f"no folder at {path}: pass the folder save_pretrained wrote, "
        "or a hub id such as 'openai-community/gpt2'"
    )


def cached_snapshot(repo_id: str) -> Path:
    """The snapshot folder of repo_id's main branch, from the cache, downloading it first unless offline."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = hub_cache_dir()
    # Cache first, even online: loading must not depend on the network when the files are already here.
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    where = f"{repo_id!r} is neither a local folder nor in the local Hugging Face cache at {cache}"
    fix = (
        f"download it once where there is internet (`huggingface-cli download {repo_id}`) into that cache "
        "(set HF_HOME or HF_HUB_CACHE to point at it), or pass the path of a local folder"
    )
    if hub_offline():
        raise CheckpointNotFoundError(f"{where}, and HF_HUB_OFFLINE is set so nothing is downloaded: {fix}")
    try:
        download = huggingface_hub.snapshot_download
        folder = Path(download(repo_id, cache_dir=cache, allow_patterns=_DOWNLOAD_PATTERNS))
        if not any(folder.glob("*.safetensors")):
            # Older repos only hold pytorch_model.bin; fetch it only then, as it doubles the download.
            folder = Path(download(repo_id, cache_dir=cache, allow_patterns=_BIN_PATTERNS))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
        cause = f"{type(e).__name__}: {e}"
        raise CheckpointNotFoundError(f"{where}, and downloading it failed ({cause}): {fix}") from e
    return folder
