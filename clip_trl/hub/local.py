"""A Hub on disk: rehearse `push_to_hub` → `from_pretrained` offline, before you have credentials.

[`local_hub`] is a context manager. Inside it,

- every upload (`Trainer.push_to_hub`, `model.push_to_hub`, `processor.push_to_hub`, `ModelCard.push_to_hub`,
  `HfApi().upload_folder` / `upload_file` / `create_commit` / `create_repo`) writes a commit into a folder laid
  out exactly like huggingface_hub's cache (`models--org--name/blobs/`, `snapshots/<commit>/`, `refs/main`);
- that folder *is* the Hub cache (`HF_HUB_CACHE`) and the Hub is offline (`HF_HUB_OFFLINE=1`), so
  `from_pretrained("org/name")`, `hf_hub_download`, peft and [`~clip_trl.hub.load_model`] read what was pushed,
  and nothing can reach the network.

On leaving, the environment and huggingface_hub are restored. Nothing of it is needed to use a real Hub: the
same code pushes for real outside the `with` block.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LocalHub", "LocalHubCommit", "local_hub"]

_REPO_TYPE_PREFIX = {"model": "models", "dataset": "datasets", "space": "spaces"}
# The HfApi methods that talk to the Hub when publishing; each is replaced while a local Hub is active.
_UPLOAD_METHODS = ("create_repo", "create_commit", "upload_folder", "upload_file", "whoami")


@dataclass
class LocalHubCommit:
    """One commit made to a [`LocalHub`]: what a test or a user checks after a push."""

    repo_id: str
    revision: str
    oid: str
    message: str
    added: list[str]
    deleted: list[str]
    folder: str | None = None  # the local folder of an `upload_folder`
    kwargs: dict[str, Any] = field(default_factory=dict)  # the call's other arguments (e.g. `commit_message`)


class LocalHub:
    """A Hub whose repositories live in `cache_dir`, in huggingface_hub's cache layout. Use [`local_hub`]."""

    def __init__(self, cache_dir: str | os.PathLike[str], namespace: str = "local-user") -> None:
        self.cache_dir = os.path.abspath(os.fspath(cache_dir))
        self.namespace = namespace
        self.commits: list[LocalHubCommit] = []

    # ------------------------------------------------------------------------------------------ layout

    def full_id(self, repo_id: str) -> str:
        """`repo_id` with the user's namespace when it has none, as the Hub does."""
        return repo_id if "/" in repo_id else f"{self.namespace}/{repo_id}"

    def repo_dir(self, repo_id: str, repo_type: str | None = None) -> str:
        prefix = _REPO_TYPE_PREFIX[repo_type or "model"]
        return os.path.join(self.cache_dir, f"{prefix}--{self.full_id(repo_id).replace('/', '--')}")

    def head(self, repo_id: str, revision: str | None = None, repo_type: str | None = None) -> str | None:
        """The commit hash `revision` (default `main`) points to, or `None` for an empty/unknown repository."""
        ref = os.path.join(self.repo_dir(repo_id, repo_type), "refs", revision or "main")
        if not os.path.isfile(ref):
            return None
        with open(ref, encoding="utf-8") as file:
            return file.read().strip()

    def snapshot(self, repo_id: str, revision: str | None = None, repo_type: str | None = None) -> str | None:
        """The snapshot folder of `revision`: what `from_pretrained` reads."""
        commit = self.head(repo_id, revision, repo_type)
        return os.path.join(self.repo_dir(repo_id, repo_type), "snapshots", commit) if commit else None

    def files(self, repo_id: str, revision: str | None = None, repo_type: str | None = None) -> list[str]:
        """The paths in the repository at `revision`, sorted."""
        snapshot = self.snapshot(repo_id, revision, repo_type)
        if snapshot is None:
            return []
        return sorted(_walk(snapshot))

    # ------------------------------------------------------------------------------------------ commits

    def commit(
        self,
        repo_id: str,
        additions: dict[str, Any],
        deletions: list[str] = (),  # type: ignore[assignment]
        *,
        revision: str | None = None,
        repo_type: str | None = None,
        message: str = "",
        folder: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Write a commit: `additions` maps paths in the repository to a local file path, bytes or a binary
        file object; `deletions` are paths (or folders, ending in `/`) to remove. Returns a `CommitInfo`."""
        from huggingface_hub import CommitInfo

        repo_id = self.full_id(repo_id)
        revision = revision or "main"
        repo_dir = self.repo_dir(repo_id, repo_type)
        blobs = os.path.join(repo_dir, "blobs")
        os.makedirs(blobs, exist_ok=True)
        old = self.snapshot(repo_id, revision, repo_type)
        tree = {path: os.path.realpath(os.path.join(old, path)) for path in _walk(old)} if old else {}
        deleted = []
        for path in deletions:
            gone = [p for p in tree if p == path or (path.endswith("/") and p.startswith(path))]
            for p in gone:
                del tree[p]
            deleted += gone
        for path, content in additions.items():
            tree[path] = _store_blob(blobs, content)
        listing = "\n".join(f"{path} {os.path.basename(blob)}" for path, blob in sorted(tree.items()))
        oid = hashlib.sha1(
            f"{self.head(repo_id, revision, repo_type)}\n{message}\n{listing}".encode()
        ).hexdigest()
        snapshot = os.path.join(repo_dir, "snapshots", oid)
        shutil.rmtree(snapshot, ignore_errors=True)
        for path, blob in tree.items():
            _link(blob, os.path.join(snapshot, path))
        os.makedirs(snapshot, exist_ok=True)  # an empty commit still has a snapshot
        ref = os.path.join(repo_dir, "refs", revision)
        os.makedirs(os.path.dirname(ref), exist_ok=True)
        with open(ref, "w", encoding="utf-8") as file:
            file.write(oid)
        self.commits.append(
            LocalHubCommit(
                repo_id, revision, oid, message, sorted(additions), sorted(deleted), folder, kwargs
            )
        )
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}",
            commit_message=message,
            commit_description="",
            oid=oid,
        )

    # ----------------------------------------------------------------------- HfApi method replacements

    def _create_repo(self, api: Any, repo_id: str, *, repo_type: str | None = None, **kwargs: Any) -> Any:
        from huggingface_hub import RepoUrl

        repo_id = self.full_id(repo_id)
        os.makedirs(os.path.join(self.repo_dir(repo_id, repo_type), "refs"), exist_ok=True)
        kind = "" if repo_type in (None, "model") else f"{_REPO_TYPE_PREFIX[repo_type]}/"
        return RepoUrl(f"https://huggingface.co/{kind}{repo_id}")

    def _create_commit(
        self,
        api: Any,
        repo_id: str,
        operations: Any,
        *,
        commit_message: str = "",
        revision: str | None = None,
        repo_type: str | None = None,
        **kwargs: Any,
    ) -> Any:
        from huggingface_hub import CommitOperationAdd, CommitOperationCopy, CommitOperationDelete

        additions: dict[str, Any] = {}
        deletions: list[str] = []
        for operation in operations:
            if isinstance(operation, CommitOperationAdd):
                with operation.as_file() as file:
                    additions[operation.path_in_repo] = file.read()
            elif isinstance(operation, CommitOperationDelete):
                deletions.append(operation.path_in_repo + ("/" if operation.is_folder else ""))
            elif isinstance(operation, CommitOperationCopy):
                source = self.snapshot(
                    operation.src_repo_id or repo_id, operation.src_revision or revision, repo_type
                )
                additions[operation.path_in_repo] = os.path.join(source or "", operation.src_path_in_repo)
        return self.commit(
            repo_id,
            additions,
            deletions,
            revision=revision,
            repo_type=repo_type,
            message=commit_message,
            **kwargs,
        )

    def _upload_file(
        self,
        api: Any,
        *,
        path_or_fileobj: Any,
        path_in_repo: str,
        repo_id: str,
        commit_message: str | None = None,
        revision: str | None = None,
        repo_type: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if isinstance(path_or_fileobj, io.IOBase):
            path_or_fileobj = path_or_fileobj.read()
        return self.commit(
            repo_id,
            {path_in_repo: path_or_fileobj},
            revision=revision,
            repo_type=repo_type,
            message=commit_message or f"Upload {path_in_repo} with huggingface_hub",
            **kwargs,
        )

    def _upload_folder(
        self,
        api: Any,
        *,
        repo_id: str,
        folder_path: str | os.PathLike[str],
        path_in_repo: str | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
        repo_type: str | None = None,
        allow_patterns: Any = None,
        ignore_patterns: Any = None,
        delete_patterns: Any = None,
        **kwargs: Any,
    ) -> Any:
        from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
        from huggingface_hub.utils import filter_repo_objects

        folder_path = os.path.abspath(os.fspath(folder_path))
        ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
        files = filter_repo_objects(
            sorted(_walk(folder_path)),
            allow_patterns=allow_patterns,
            ignore_patterns=ignore + list(DEFAULT_IGNORE_PATTERNS),
        )
        prefix = (path_in_repo or "").strip("/")
        prefix = f"{prefix}/" if prefix else ""
        additions = {prefix + path: os.path.join(folder_path, path) for path in files}
        deletions = []
        if delete_patterns:
            existing = [
                p[len(prefix) :] for p in self.files(repo_id, revision, repo_type) if p.startswith(prefix)
            ]
            deletions = [
                prefix + p
                for p in filter_repo_objects(existing, allow_patterns=delete_patterns)
                if prefix + p not in additions
            ]
        return self.commit(
            repo_id,
            additions,
            deletions,
            revision=revision,
            repo_type=repo_type,
            message=commit_message or "Upload folder using huggingface_hub",
            folder=folder_path,
            **kwargs,
        )

    def _whoami(self, api: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"type": "user", "name": self.namespace, "orgs": []}


def _walk(root: str) -> Iterator[str]:
    for folder, _, names in os.walk(root, followlinks=True):
        for name in names:
            yield os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")


def _store_blob(blobs: str, content: Any) -> str:
    """Store `content` (a path, bytes or a binary file) as a blob named by its sha256, as LFS files are."""
    if isinstance(content, (str, os.PathLike)):
        with open(content, "rb") as file:
            content = file.read()
    elif not isinstance(content, bytes):
        content = content.read()
    blob = os.path.join(blobs, hashlib.sha256(content).hexdigest())
    if not os.path.exists(blob):
        with open(blob, "wb") as file:
            file.write(content)
    return blob


def _link(blob: str, path: str) -> None:
    """Point `path` at `blob` with a relative symlink, as huggingface_hub does (a copy where links fail)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.symlink(os.path.relpath(blob, os.path.dirname(path)), path)
    except OSError:
        shutil.copyfile(blob, path)


def _call_or_future(method: Any) -> Any:
    # Methods huggingface_hub marks `future_compatible` take `run_as_future=True` and return a Future.
    def wrapper(api: Any, *args: Any, run_as_future: bool = False, **kwargs: Any) -> Any:
        result = method(api, *args, **kwargs)
        if not run_as_future:
            return result
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(result)
        return future

    return wrapper


@contextlib.contextmanager
def local_hub(folder: str | os.PathLike[str], *, namespace: str = "local-user") -> Iterator[LocalHub]:
    r"""
    Serve `push_to_hub` and `from_pretrained` from `folder`, a Hub cache on disk, offline.

    Inside the `with` block, uploads commit into `folder` (huggingface_hub's cache layout:
    `models--org--name/snapshots/<commit>/...` with `refs/main`), `HF_HUB_CACHE` is `folder` and
    `HF_HUB_OFFLINE=1`, so loading a pushed repository by its id reads the pushed files — exactly what someone
    who downloaded it from the Hub would have. Use it to rehearse sharing a model (is the card right? does the
    adapter find its base? does the card's snippet run?) before you have a token, and in tests.

    Args:
        folder (`str` or `os.PathLike`):
            The Hub's storage; created if missing. Reuse the folder to keep what was pushed across blocks.
        namespace (`str`, *optional*, defaults to `"local-user"`):
            The user name that `whoami` returns and that a repository id without one (`push_to_hub("name")`)
            gets, as the Hub does with yours.

    Yields:
        [`LocalHub`]: `.commits` lists every commit made ([`LocalHubCommit`]: repo id, message, paths added),
        `.files(repo_id)` the files of a repository, `.snapshot(repo_id)` its folder.

    Example:

    ```python
    >>> import tempfile
    >>> from transformers import CLIPModel
    >>> from clip_trl.hub import local_hub
    >>> from clip_trl.offline import build_clip
    >>> model, processor = build_clip("tiny")
    >>> with local_hub(tempfile.mkdtemp()) as hub:
    ...     _ = model.push_to_hub("me/tiny-clip")
    ...     _ = processor.push_to_hub("me/tiny-clip")
    ...     loaded = CLIPModel.from_pretrained("me/tiny-clip")  # from the local Hub, offline
    ...     print(len(hub.commits), [f for f in hub.files("me/tiny-clip") if f.endswith(".json")][:2])
    2 ['config.json', 'processor_config.json']

    ```
    """
    from huggingface_hub import HfApi, constants, hf_api

    hub = LocalHub(folder, namespace=namespace)
    os.makedirs(hub.cache_dir, exist_ok=True)
    restore: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, value: Any) -> None:
        restore.append(
            (
                owner,
                name,
                owner.__dict__.get(name, _MISSING)
                if isinstance(owner, type)
                else getattr(owner, name, _MISSING),
            )
        )
        setattr(owner, name, value)

    replacements = {
        "create_repo": hub._create_repo,
        "create_commit": _call_or_future(hub._create_commit),
        "upload_folder": _call_or_future(hub._upload_folder),
        "upload_file": _call_or_future(hub._upload_file),
        "whoami": hub._whoami,
    }
    env = {"HF_HUB_CACHE": hub.cache_dir, "HF_HUB_OFFLINE": "1"}
    saved_env = {key: os.environ.get(key) for key in env}
    try:
        os.environ.update(env)
        patch(constants, "HF_HUB_CACHE", hub.cache_dir)
        patch(constants, "HF_HUB_OFFLINE", True)
        # Modules that bound the module-level shortcuts (`from huggingface_hub import upload_file`) keep the
        # original bound methods: replace those bindings too.
        originals = {name: getattr(hf_api, name) for name in _UPLOAD_METHODS if hasattr(hf_api, name)}
        shortcuts = {id(value): name for name, value in originals.items()}
        for name, method in replacements.items():
            patch(HfApi, name, lambda self, *a, _m=method, **k: _m(self, *a, **k))
        # (Every loaded module, a user's script included; only those exact objects are replaced, and restored.)
        for module in list(sys.modules.values()):
            module_dict = getattr(module, "__dict__", None)
            if not isinstance(module_dict, dict):
                continue
            for attr, value in list(module_dict.items()):
                if id(value) in shortcuts and value is originals[shortcuts[id(value)]]:
                    patch(module, attr, getattr(HfApi(), shortcuts[id(value)]))
        yield hub
    finally:
        for owner, name, value in reversed(restore):
            if value is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_MISSING = object()
