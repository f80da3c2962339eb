"""Fail at once, with the nearest folder names, when a model "name" is a local folder that does not exist.

`from_pretrained` reads a string as a local folder when one exists and as a Hub repository id otherwise. A
mistyped folder therefore becomes a Hub id: `"clip_finetunedd"` spends the better part of a minute retrying an
unreachable Hub before saying it "could not connect", and `"./clip_finetunedd"` fails with "Repo id must use
alphanumeric chars". [`check_model_source`] runs before every load of the library (the trainers' `model="..."`,
[`clip_trl.hub.load_model`], the CLI) and raises a `FileNotFoundError` that names the folder it looked for and
the existing folders closest to it, when

- the name can only be a path (it starts with `./`, `../`, `/` or `~`, or has more separators than an
  `org/name` id), or
- it is not in the Hub cache and a folder beside it has a close name (`clip_finetuned` for `clip_finetunedd`), or
- it is not in the Hub cache and the Hub cannot be asked: `HF_HUB_OFFLINE=1`, or the endpoint refuses the
  connection (one request, no retries).

Hub ids that are cached (`HF_HUB_OFFLINE=1` runs included) or that a reachable Hub can answer go on to
`from_pretrained` untouched.

Example:

```python
>>> import os, tempfile
>>> from clip_trl.models.locate import check_model_source
>>> parent = tempfile.mkdtemp()
>>> os.mkdir(os.path.join(parent, "clip_finetuned"))
>>> try:
...     check_model_source(os.path.join(parent, "clip_finetunedd"))
... except FileNotFoundError as error:
...     print(error.args[0].startswith("No such folder"), "did you mean" in error.args[0])
True True

```
"""

from __future__ import annotations

import difflib
import os
import re

__all__ = ["check_model_source", "is_path_like"]

# huggingface_hub's rule for a repository id: one optional namespace, then the name.
_REPO_ID = re.compile(r"^(?:[\w.\-]{1,96}/)?[\w.\-]{1,96}$")
_PATH_PREFIXES = ("./", "../", "~", ".\\", "..\\")
# Seconds one request to the Hub endpoint may take to say it is there (it is asked only for uncached names).
HUB_PROBE_TIMEOUT = 3.0
# The HTTP client's exceptions (httpx and its successors name them alike) that mean no connection was made.
_NO_CONNECTION = {"ConnectError", "ConnectTimeout", "ProxyError", "OfflineModeIsEnabled"}


def is_path_like(name: str) -> bool:
    """Whether `name` can only be a local path, never a Hub repository id."""
    if name.startswith(_PATH_PREFIXES) or os.path.isabs(name):
        return True
    separators = [sep for sep in (os.sep, os.altsep) if sep and sep != "/"]
    if any(sep in name for sep in separators):
        return True
    return not _REPO_ID.match(name) or ".." in name or "--" in name


def _in_hub_cache(name: str, cache_dir: str | os.PathLike[str] | None) -> bool:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    cache = os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    folder = os.path.join(cache, repo_folder_name(repo_id=name, repo_type="model"))
    return os.path.isdir(os.path.join(folder, "snapshots"))


def _hub_unreachable() -> str | None:
    """Why the Hub cannot be asked (offline mode, or its endpoint refuses), or `None` when it answers."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT)
    except Exception as error:
        # Only "no connection" counts (refused, unknown host, connect timeout, offline mode): a slow answer is
        # left to the loader, which may still get the files.
        kinds = {cls.__name__ for cls in type(error).__mro__}
        if isinstance(error, OSError) or kinds & _NO_CONNECTION:
            return f"the Hub at {constants.ENDPOINT} cannot be reached ({type(error).__name__}: {error})"
    return None


def _close_folders(folder: str) -> tuple[str, list[str]]:
    """The existing parent of `folder` (absolute) and the names of the subfolders there closest to its name."""
    parent, name = os.path.split(os.path.abspath(folder))
    try:
        siblings = [entry.name for entry in os.scandir(parent) if entry.is_dir()]
    except OSError:
        return parent, []
    return parent, difflib.get_close_matches(name, siblings, n=3, cutoff=0.6)


def _message(name: str, path: str, parent: str, close: list[str], reason: str | None) -> str:
    text = f"No such folder: {name!r} (looked for {path})"
    if reason is not None:
        text += f", and it is not a Hub repository in the cache, while {reason}"
    if close:
        suggestions = " or ".join(repr(os.path.join(os.path.dirname(name), c)) for c in close)
        return text + f" — did you mean {suggestions}? (Hub ids are 'org/name'.)"
    if os.path.isdir(parent):
        text += f" — {parent} has no folder with a similar name"
    else:
        text += f" — {parent} does not exist either"
    return text + ". Pass an existing folder, or a Hub id as 'org/name'."


def check_model_source(
    name: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> None:
    """Raise a `FileNotFoundError` when `name` is meant as a local folder that does not exist (see the module
    docstring); return when it exists, or when it can be a Hub repository the loader can get.

    Args:
        name: what is passed to `from_pretrained` (a folder or a Hub id).
        cache_dir: the Hub cache to look in (default: huggingface_hub's).
        local_files_only: the load will not ask the Hub (as with `HF_HUB_OFFLINE=1`).
    """
    name = os.fspath(name)
    path = os.path.expanduser(name)
    if os.path.exists(path):
        return
    if is_path_like(name):
        parent, close = _close_folders(path)
        raise FileNotFoundError(_message(name, os.path.abspath(path), parent, close, None))
    if _in_hub_cache(name, cache_dir):
        return
    parent, close = _close_folders(path)
    if close:
        raise FileNotFoundError(_message(name, os.path.abspath(path), parent, close, None))
    reason = "`local_files_only=True` was passed" if local_files_only else _hub_unreachable()
    if reason is not None:
        raise FileNotFoundError(_message(name, os.path.abspath(path), parent, close, reason))
