"""Datasets and weights versioned with DVC, through DVC's Python API.

An :class:`ArtifactStore` wraps one git work tree. It initialises DVC there, configures a
default remote, tracks files and folders (``data/<specialist>/<hash>.jsonl``,
``models/<specialist>/v3/``) and moves their content to and from the remote. Events record the
content hash DVC writes into each ``.dvc`` file (an ``md5``; for a folder the md5 of its listing,
ending in ``.dir``).

Conventions:

- Paths given to the store are relative to its root (or absolute inside it), never to the
  current directory; returned paths are relative to the root.
- The store stages what it changes on the git side (``.dvc`` files, the ``.gitignore`` beside
  each tracked path, ``.dvc/config``) in the git index with pygit2 and returns those paths.
  Tracking never commits; :meth:`ArtifactStore.commit` commits the pointer files of one change
  (a candidate's dataset and weights, with DVC's setup files when the branch lacks them) on
  the checked-out branch and nothing else (:mod:`.commits`).
- Where DVC was initialised by someone else, the store changes no committed file: its
  analytics switch goes into ``.dvc/config.local``.
- Remotes: an explicit URL goes into ``.dvc/config`` (committed, shared by the team); the
  embedded default — ``$MODELSMITH_DVC_REMOTE``, else a folder under the Modelsmith cache —
  goes into ``.dvc/config.local`` (machine-specific, git-ignored by DVC). A fresh clone of a
  repository whose remote was machine-local has none: ``push``, ``pull`` and a remote
  ``status`` then adopt ``$MODELSMITH_DVC_REMOTE`` the same way (CI sets it).
- Cloud remotes (``s3://``, ``gs://``, ``azure://``) need DVC's plugin for them (the ``s3``
  extra installs ``dvc-s3``). Credentials come from the environment only (``AWS_*``,
  ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_*``), as the cloud SDKs read them; the
  store never writes a secret into a config file. An S3-compatible server's endpoint is not
  a secret: ``endpointurl`` in ``.dvc/config`` or ``$AWS_ENDPOINT_URL_S3`` (read by
  botocore). A missing plugin, missing or refused credentials, an unreachable endpoint and a
  missing bucket are :class:`ArtifactError` messages naming the remote and what to set.
- Each operation opens a fresh ``dvc.repo.Repo`` and closes it: a long-lived instance keeps an
  in-memory index, and a ``pull`` after the local cache was deleted then fails.
- DVC's console logging is captured while a call runs (not thread-safe: one call at a time per
  process); its errors end up in :class:`ArtifactError` messages, its warnings in this module's
  logger. Importing this module imports no DVC: every DVC import is inside a function.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from modelsmith.errors import ModelsmithError

from .commits import PathsCommit, commit_paths, in_head
from .models import cache_root

if TYPE_CHECKING:
    from dvc.repo import Repo

#: Name under which Modelsmith configures its remote.
REMOTE_NAME = "modelsmith"
#: Overrides the embedded default remote (a folder or any DVC remote URL).
REMOTE_ENV = "MODELSMITH_DVC_REMOTE"
DVC_LOGGERS = ("dvc", "dvc_data", "dvc_objects")
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: What ``dvc init`` adds to git; committed with the first pointer files when the branch
#: lacks them.
SETUP_FILES = (".dvc/config", ".dvc/.gitignore", ".dvcignore")
#: Remote options that hold a secret: never in the committed ``.dvc/config``.
SECRET_OPTIONS = ("access_key_id", "secret_access_key", "session_token", "password",
                  "account_key", "sas_token", "connection_string", "client_secret",
                  "gdrive_client_secret", "token")
#: How to install each cloud scheme's DVC plugin.
CLOUD_PLUGINS = {"s3": "pip install 'modelsmith[s3]' (dvc-s3)",
                 "gs": "pip install dvc-gs", "gcs": "pip install dvc-gs",
                 "azure": "pip install dvc-azure"}
S3_CREDENTIALS = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the "
                  "environment (in CI: repository secrets), or for this machine only "
                  "`dvc remote modify --local {name} access_key_id ...`; never in "
                  ".dvc/config, which is committed")
S3_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
S3_REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
              "InvalidClientTokenId", "AuthorizationHeaderMalformed"}

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


class ArtifactError(ModelsmithError):
    """A DVC operation could not be done; the message says what to do about it."""


@dataclass(frozen=True)
class TrackedArtifact:
    """A file or folder under DVC control, as its ``.dvc`` file records it.

    ``path`` and ``dvc_file`` are relative to the store's root; ``md5`` is the content hash
    (``<md5>.dir`` for a folder); ``nfiles`` is None for a single file. ``git_paths`` are the
    files staged in the git index for the caller to commit.
    """

    path: Path
    dvc_file: Path
    md5: str
    size: int | None
    nfiles: int | None
    git_paths: tuple[Path, ...] = ()


def default_remote(root: Path) -> str:
    """The embedded default remote of a work tree: ``$MODELSMITH_DVC_REMOTE``, else a folder
    ``<cache>/dvc-remote/<repo name>-<hash of its path>`` outside the work tree."""
    env = os.environ.get(REMOTE_ENV)
    if env:
        return env
    root = Path(root).resolve()
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return str(cache_root() / "dvc-remote" / f"{root.name}-{digest}")


class _CapturedLogs(logging.Handler):
    """Keeps DVC's warnings and errors instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def exceptions(self) -> list[BaseException]:
        """The exceptions DVC logged with their records (a failed transfer's cause)."""
        return [r.exc_info[1] for r in self.records if r.exc_info and r.exc_info[1]]

    def lines(self, minimum: int = logging.WARNING) -> list[str]:
        out: list[str] = []
        for record in self.records:
            if record.levelno < minimum:
                continue
            with contextlib.suppress(Exception):
                text = record.getMessage().strip()
                if text and text not in out:
                    out.append(text)
        return out


@contextlib.contextmanager
def _quiet_dvc() -> Iterator[_CapturedLogs]:
    """Silence DVC's console output (info lines, progress bars) and capture its warnings.

    DVC's progress bars disable themselves when its logger is above INFO.
    """
    capture = _CapturedLogs()
    saved = []
    for name in DVC_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.level, logger.propagate))
        logger.handlers = [capture]
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    try:
        with warnings.catch_warnings():
            # DVC 3.67 trips pygtrie's deprecation of `_NoneStep.value` on every call.
            warnings.simplefilter("ignore", DeprecationWarning)
            yield capture
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers = handlers
            logger.setLevel(level)
            logger.propagate = propagate


def _no_remote(operation: str) -> str:
    return (f"dvc {operation}: no DVC remote is configured. Set ${REMOTE_ENV} (a folder or "
            "a URL such as s3://BUCKET/PATH), or run `dvc remote add -d NAME URL` and commit "
            ".dvc/config (ArtifactStore.ensure_initialised(remote=URL) does the same).")


def _failure(operation: str, exc: BaseException, capture: _CapturedLogs) -> str:
    """An actionable message from a DVC exception and what DVC logged before it."""
    from dvc.config import NoRemoteError

    if isinstance(exc, NoRemoteError):
        return _no_remote(operation)
    causes = []
    current: BaseException | None = exc
    while current is not None:
        text = str(current).strip()
        if text and text not in causes:
            causes.append(text)
        current = current.__cause__
    detail = "; ".join(causes) or type(exc).__name__
    logged = capture.lines(logging.ERROR)
    if logged:
        detail += "\n" + "\n".join(f"  {line}" for line in logged[:10])
        if len(logged) > 10:
            detail += f"\n  ... and {len(logged) - 10} more"
    if "--force" in detail:
        detail += "\n  (pass force=True to overwrite local changes)"
    return f"dvc {operation} failed: {detail}"


@dataclass(frozen=True)
class _Remote:
    """The default remote as a failure message names it."""

    name: str
    url: str
    endpoint: str | None  # an S3-compatible server's, when one is set

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme.lower()

    @property
    def bucket(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def where(self) -> str:
        return f" at {self.endpoint}" if self.endpoint else ""


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or while handling."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        pending += [current.__cause__, current.__context__]
        pending += [e for e in getattr(current, "exceptions", ()) if isinstance(e, BaseException)]
    return seen


def _error_code(exc: BaseException) -> str | None:
    """The service's error code of a botocore ``ClientError`` (``NoSuchBucket``, ...)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):
        code = response["Error"].get("Code")
        return str(code) if code else None
    return None


def _cloud_failure(operation: str, exc: BaseException, remote: _Remote | None,
                   logged: Iterable[BaseException] = ()) -> str | None:
    """What to fix when a cloud remote failed: its plugin, credentials, endpoint or bucket;
    None when ``exc`` (or what DVC ``logged`` before raising it) is none of those."""
    chain = [e for cause in (exc, *logged) for e in _chain(cause)]
    names = {type(e).__name__ for e in chain}
    codes = {c for c in map(_error_code, chain) if c}
    text = " ".join(str(e) for e in chain)
    missing = next((e for e in chain if type(e).__name__ == "RemoteMissingDepsError"), None)
    if missing is not None:
        scheme = str(getattr(missing, "protocol", "") or (remote.scheme if remote else ""))
        url = remote.url if remote else (getattr(missing, "url", None) or f"{scheme}://")
        install = CLOUD_PLUGINS.get(scheme, f"pip install dvc-{scheme}")
        return (f"dvc {operation}: the remote {url} needs DVC's {scheme} plugin, which is not "
                f"installed: {install}")
    if remote is None:
        return None
    prefix = f"dvc {operation}: remote '{remote.name}' ({remote.url}{remote.where})"
    if names & {"NoCredentialsError", "PartialCredentialsError", "ProfileNotFound"}:
        if "ProfileNotFound" in names:
            found = next(e for e in chain if type(e).__name__ == "ProfileNotFound")
            return (f"{prefix}: {found}: fix AWS_PROFILE or unset it, or "
                    + S3_CREDENTIALS.format(name=remote.name))
        return f"{prefix}: no credentials found: " + S3_CREDENTIALS.format(name=remote.name)
    refused = codes & S3_REFUSED
    if refused:
        return (f"{prefix}: the server refused the credentials ({', '.join(sorted(refused))}): "
                "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the "
                "environment, or the remote's `dvc remote modify --local` settings")
    if "NoSuchBucket" in codes or "NoSuchBucket" in text or (
            "bucket does not exist" in text.lower()):
        return (f"{prefix}: the bucket '{remote.bucket}' does not exist: create "
                f"it, or point the remote at an existing one (${REMOTE_ENV}, or `dvc remote "
                f"modify {remote.name} url s3://BUCKET/PATH`)")
    grant = (f"s3://{remote.bucket} (s3:ListBucket, s3:GetObject, s3:PutObject)")
    if "AccessDenied" in codes:
        return (f"{prefix}: access denied: the credentials may not list, read and write "
                f"{grant}; grant them that, or use other credentials")
    if codes & {"Forbidden", "403"}:  # a HEAD request's answer carries no reason
        return (f"{prefix}: the server answered 403 Forbidden: check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment, and that they may "
                f"list, read and write {grant}")
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                "ClientConnectorError", "ServerDisconnectedError"}:
        if remote.scheme != "s3":
            return f"{prefix}: cannot reach the storage service: check the network and the URL"
        endpoint = remote.endpoint or "the default endpoint"
        return (f"{prefix}: cannot reach {endpoint}: check the server is up and the address "
                "is right (`endpointurl` in .dvc/config, or $AWS_ENDPOINT_URL_S3)")
    return None


def _dvc_errors() -> tuple[type[BaseException], ...]:
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    return (DvcException, SCMError, OSError)


def _is_url(value: str) -> bool:
    return bool(URL_SCHEME.match(value))


def _read_dvc_file(dvc_file: Path) -> dict[str, Any]:
    """The single output of a ``.dvc`` file, as written there."""
    from ruamel.yaml import YAML, YAMLError

    try:
        data = YAML(typ="safe", pure=True).load(dvc_file.read_text(encoding="utf-8"))
    except (OSError, YAMLError) as exc:
        raise ArtifactError(f"{dvc_file}: cannot read the DVC file: {exc}") from exc
    outs = data.get("outs") if isinstance(data, dict) else None
    if not isinstance(outs, list) or len(outs) != 1 or not isinstance(outs[0], dict):
        raise ArtifactError(f"{dvc_file}: expected exactly one entry under 'outs'")
    out = outs[0]
    if not isinstance(out.get("md5"), str):
        raise ArtifactError(
            f"{dvc_file}: no md5 recorded (added with --no-commit?); run track() again"
        )
    return out


#: Operations that talk to the remote.
CLOUD_OPERATIONS = ("push", "pull", "status")


def _default_remote(repo: Repo) -> _Remote | None:
    """The default remote of an open repo, with the S3 endpoint it would use."""
    with contextlib.suppress(Exception):
        name = repo.config["core"].get("remote")
        conf = repo.config["remote"].get(name, {}) if name else {}
        if conf.get("url"):
            endpoint = conf.get("endpointurl") or next(
                (os.environ[v] for v in S3_ENDPOINT_ENV if os.environ.get(v)), None)
            url = str(conf["url"])
            return _Remote(str(name), url, endpoint if url.startswith("s3://") else None)
    return None


def _refuse_committed_secrets(repo: Repo) -> None:
    """Fail when the committed ``.dvc/config`` holds a remote's secret."""
    try:
        committed = repo.config.load_one("repo")
    except Exception:  # an unreadable config fails with DVC's own message later
        return
    for name, conf in (committed.get("remote") or {}).items():
        found = sorted(k for k in conf if k in SECRET_OPTIONS)
        if found:
            unset = " ".join(f"`dvc remote modify --unset {name} {k}`" for k in found)
            raise ArtifactError(
                f".dvc/config: remote '{name}' holds {', '.join(found)}, and that file is "
                f"committed: remove it ({unset}), rotate the secret, and give it through the "
                "environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ...) or `dvc remote "
                f"modify --local {name} ...` (.dvc/config.local is never committed)")


class ArtifactStore:
    """Datasets and weights of one git work tree, versioned with DVC."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root).expanduser().resolve()

    # -- setup -----------------------------------------------------------------------------

    def ensure_initialised(self, remote: str | None = None) -> None:
        """Make the work tree a DVC repository with a default remote; idempotent.

        Runs ``dvc init`` when ``.dvc/`` is missing, turns DVC's analytics off in the repo
        config, and configures the default remote: ``remote`` (any DVC remote URL or folder)
        when given and different from the current default — written to ``.dvc/config`` and
        replacing any machine-local default — else the embedded default
        (:func:`default_remote`, into ``.dvc/config.local``) when no default is configured.
        A folder remote must lie outside the work tree. Changed git-side files are staged, not
        committed.
        """
        if not self.root.is_dir():
            raise ArtifactError(f"{self.root}: no such folder")
        if not (self.root / ".git").exists():
            raise ArtifactError(
                f"{self.root} is not the top of a git work tree: run `git init` there first "
                "(DVC files are versioned with git)"
            )
        url = self._remote_url(remote) if remote is not None else None
        staged: list[Path] = []
        ours = not (self.root / ".dvc").is_dir()
        if ours:
            from dvc.repo import Repo

            with _quiet_dvc() as capture:
                try:
                    Repo.init(str(self.root)).close()
                except _dvc_errors() as exc:
                    raise ArtifactError(_failure("init", exc, capture)) from exc
            staged += [Path(".dvc/config"), Path(".dvc/.gitignore"), Path(".dvcignore")]

        with self._repo("config") as repo:
            config = repo.config
            if config["core"].get("analytics", True):
                # A DVC someone else initialised keeps its committed config as it is.
                with config.edit("repo" if ours else "local") as conf:
                    conf["core"]["analytics"] = False
                if ours:
                    staged.append(Path(".dvc/config"))
            current = config["core"].get("remote")
            current_url = config["remote"].get(current, {}).get("url") if current else None
            if url is not None and url != current_url:
                with config.edit("repo") as conf:
                    conf["remote"][REMOTE_NAME] = {"url": url}
                    conf["core"]["remote"] = REMOTE_NAME
                # The machine-local default would shadow the repo config: drop it.
                with config.edit("local") as conf:
                    conf["remote"].pop(REMOTE_NAME, None)
                    conf["core"].pop("remote", None)
                staged.append(Path(".dvc/config"))
            elif url is None and not current:
                self._set_local_default(repo, default_remote(self.root))
        self._stage(staged)

    def _set_local_default(self, repo: Repo, remote: str) -> None:
        """Make ``remote`` the default in ``.dvc/config.local`` (machine-specific)."""
        url = self._remote_url(remote)
        if not _is_url(url):
            Path(url).mkdir(parents=True, exist_ok=True)
        with repo.config.edit("local") as conf:
            conf["remote"][REMOTE_NAME] = {"url": url}
            conf["core"]["remote"] = REMOTE_NAME

    def _adopt_env_remote(self) -> None:
        """A work tree with no default remote (a fresh clone of a repository whose remote
        was machine-local) takes ``$MODELSMITH_DVC_REMOTE`` as it, in ``.dvc/config.local``;
        with neither, DVC's own "no remote" error stands."""
        if not os.environ.get(REMOTE_ENV):
            return
        with self._repo("config") as repo:
            if not repo.config["core"].get("remote"):
                self._set_local_default(repo, os.environ[REMOTE_ENV])

    def remote_url(self) -> str | None:
        """The URL of the default remote, or None when none is configured."""
        with self._repo("config") as repo:
            name = repo.config["core"].get("remote")
            if not name:
                return None
            url = repo.config["remote"].get(name, {}).get("url")
            return str(url) if url is not None else None

    # -- tracking --------------------------------------------------------------------------

    def track(self, path: PathLike, message: str | None = None) -> TrackedArtifact:
        """Put a file or folder under DVC control (``dvc add``) and stage its git side.

        ``message`` becomes the output's ``desc`` in the ``.dvc`` file. Tracking an unchanged
        path again changes nothing and returns the same hash.
        """
        target = self._resolve(path)
        if not target.exists():
            raise ArtifactError(f"{self._rel(target)}: no such file or folder to track")
        with self._repo("add") as repo:
            stages = repo.add([str(target)])
            if message is not None and stages:
                stage = stages[0]
                stage.outs[0].annot.desc = message
                stage.dump()
        dvc_file = self._dvc_file(target)
        git_paths = [dvc_file]
        gitignore = target.parent / ".gitignore"
        if gitignore.is_file():
            git_paths.append(gitignore)
        self._stage(self._rel(p) for p in git_paths)
        out = _read_dvc_file(dvc_file)
        return TrackedArtifact(
            path=self._rel(target),
            dvc_file=self._rel(dvc_file),
            md5=out["md5"],
            size=out.get("size"),
            nfiles=out.get("nfiles"),
            git_paths=tuple(self._rel(p) for p in git_paths),
        )

    def pointer_files(self, path: PathLike) -> tuple[Path, ...]:
        """The git side of a tracked path, relative to the root: its ``.dvc`` file and the
        ``.gitignore`` DVC keeps beside it (when there is one)."""
        target = self._resolve(path)
        files = [self._dvc_file(target)]
        if (target.parent / ".gitignore").is_file():
            files.append(target.parent / ".gitignore")
        return tuple(self._rel(p) for p in files)

    def commit(self, paths: Iterable[PathLike], message: str) -> PathsCommit:
        """Commit ``paths`` (pointer files, relative to the root) on the checked-out branch,
        with DVC's setup files (:data:`SETUP_FILES`) the branch does not hold yet; nothing
        else is committed and a user's staged changes stay staged. No branch to commit on
        (a detached HEAD, ...): nothing is committed and the result's ``reason`` says why."""
        wanted = {Path(p).as_posix() for p in paths}
        wanted.update(p for p in SETUP_FILES
                      if (self.root / p).is_file() and not in_head(self.root, p))
        return commit_paths(self.root, sorted(wanted), message)

    def hash_of(self, path: PathLike) -> str:
        """The content hash recorded in the path's ``.dvc`` file (nothing is recomputed)."""
        target = self._resolve(path)
        return str(_read_dvc_file(self._tracked_dvc_file(target))["md5"])

    def verify(self, path: PathLike) -> bool:
        """Recompute the path's content hash, ignoring DVC's hash cache, and compare it with
        the ``.dvc`` file; False when the content differs or is missing."""
        target = self._resolve(path)
        out = _read_dvc_file(self._tracked_dvc_file(target))
        if not target.exists():
            return False
        hash_name = out.get("hash", "md5-dos2unix")  # DVC 2 files carry no "hash" field
        return self.content_hash(target, hash_name) == out["md5"]

    def weights_hash(self, path: PathLike) -> str | None:
        """What an evaluation records it measured: the content hash of the weights at
        ``path`` as a lineage records it; None where DVC was never initialised (no
        candidate trained here has a recorded hash to compare with)."""
        if not (self.root / ".dvc").is_dir():
            return None
        return self.content_hash(path)

    def content_hash(self, path: PathLike, hash_name: str = "md5") -> str:
        """The hash DVC would record for ``path`` (a file, or a folder's ``.dir`` hash),
        computed from its bytes; the path need not be tracked."""
        from dvc_data.hashfile.build import build
        from dvc_data.hashfile.db import HashFileDB
        from dvc_objects.fs import LocalFileSystem

        target = self._resolve(path)
        if not target.exists():
            raise ArtifactError(f"'{path}' does not exist")
        with self._repo("hash") as repo:
            fs = LocalFileSystem()
            # A throwaway object database without DVC's state db: every file is re-read.
            odb = HashFileDB(fs, str(self.root / ".dvc" / "tmp" / "verify"), hash_name=hash_name)
            _, _, obj = build(odb, str(target), fs, hash_name, dry_run=True, ignore=repo.dvcignore)
        return str(obj.hash_info.value)

    # -- moving content --------------------------------------------------------------------

    def push(self, paths: Iterable[PathLike] | None = None) -> int:
        """Upload tracked content (all, or the given paths) to the default remote; returns
        the number of files transferred."""
        self._adopt_env_remote()
        with self._repo("push") as repo:
            return int(repo.push(targets=self._targets(paths)))

    def pull(self, paths: Iterable[PathLike] | None = None, *, force: bool = False) -> int:
        """Download tracked content from the default remote and check it out into the work
        tree; returns the number of files fetched. ``force`` overwrites local changes."""
        self._adopt_env_remote()
        try:
            with self._repo("pull") as repo:
                result = repo.pull(targets=self._targets(paths), force=force)
        except ArtifactError as exc:
            # With no remote DVC fetches nothing and says only that the checkout failed.
            if self.remote_url() is None:
                raise ArtifactError(_no_remote("pull")) from exc
            raise
        return int(result.get("stats", {}).get("fetched", 0))

    def checkout(
        self, paths: Iterable[PathLike] | None = None, *, force: bool = False
    ) -> list[str]:
        """Restore tracked paths in the work tree from the local cache, as the ``.dvc`` files
        say; returns the restored paths. ``force`` overwrites local changes."""
        with self._repo("checkout") as repo:
            result = repo.checkout(targets=self._targets(paths), force=force)
        changed = [*result.get("added", []), *result.get("modified", [])]
        return sorted(self._rel_from_dvc(p) for p in changed)

    def status(self, remote: bool = True) -> dict[str, str]:
        """What differs from the ``.dvc`` files and (with ``remote``) from the remote.

        Keys are paths relative to the root (or pipeline stage names), values a short state:
        ``modified``, ``deleted``, ``not in cache``, ``not pushed`` (in the cache only),
        ``missing`` (neither in the cache nor on the remote). Clean is ``{}``.
        """
        changes: dict[str, list[str]] = {}
        if remote:
            self._adopt_env_remote()

        def note(key: str, state: str) -> None:
            states = changes.setdefault(key, [])
            if state not in states:
                states.append(state)

        with self._repo("status") as repo:
            for stage, entries in repo.status().items():
                for entry in entries:
                    if isinstance(entry, str):
                        note(self._stage_key(stage), entry)
                        continue
                    for kind in entry.values():
                        if isinstance(kind, dict):
                            for out, state in kind.items():
                                note(self._rel_from_dvc(out), str(state))
                        else:
                            note(self._stage_key(stage), str(kind))
            if remote:
                cloud_states = {"new": "not pushed", "deleted": "not in cache"}
                for out, state in repo.status(cloud=True).items():
                    note(out.rstrip("/"), cloud_states.get(state, str(state)))
        return {key: ", ".join(states) for key, states in sorted(changes.items())}

    # -- internals -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _repo(self, operation: str) -> Iterator[Repo]:
        """A fresh DVC repo for one operation, quiet, with failures as ArtifactError."""
        if not (self.root / ".dvc").is_dir():
            raise ArtifactError(
                f"{self.root} is not a DVC repository yet: call "
                "ArtifactStore.ensure_initialised() (or run `dvc init`) first"
            )
        from dvc.repo import Repo

        with _quiet_dvc() as capture:
            try:
                repo = Repo(str(self.root))
            except _dvc_errors() as exc:
                raise ArtifactError(_failure(operation, exc, capture)) from exc
            try:
                if operation in CLOUD_OPERATIONS:
                    _refuse_committed_secrets(repo)
                yield repo
            except ArtifactError:
                raise
            except Exception as exc:
                cloud = _cloud_failure(operation, exc, _default_remote(repo),
                                       capture.exceptions())
                if cloud is not None:
                    raise ArtifactError(cloud) from exc
                if isinstance(exc, _dvc_errors()):
                    raise ArtifactError(_failure(operation, exc, capture)) from exc
                raise
            finally:
                repo.close()
            for line in capture.lines():
                log.warning("dvc %s: %s", operation, line)

    def _remote_url(self, remote: str) -> str:
        """A remote URL as DVC stores it; a folder becomes absolute and must be outside. A
        URL carrying a password is refused: config files are no place for secrets."""
        if _is_url(remote) and not remote.startswith("file://"):
            try:
                parts = urlsplit(remote)
                secret = parts.password is not None
            except ValueError as exc:
                raise ArtifactError(f"DVC remote {remote!r} is not a valid URL: {exc}") from exc
            if secret:
                shown = remote.replace(f":{parts.password}@", ":***@", 1)
                raise ArtifactError(
                    f"DVC remote {shown} carries a password in its URL: DVC would store it in "
                    "a config file; drop it from the URL and give the credentials through the "
                    "environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for s3://, ...)")
            return remote
        folder = Path(remote.removeprefix("file://")).expanduser().resolve()
        if folder == self.root or self.root in folder.parents:
            raise ArtifactError(
                f"DVC remote {folder} lies inside the work tree {self.root}: a remote must be "
                f"outside it (set ${REMOTE_ENV} or pass another folder or URL)"
            )
        return str(folder)

    def _resolve(self, path: PathLike) -> Path:
        """An absolute path inside the work tree; relative paths are relative to the root."""
        raw = Path(path).expanduser()
        target = (raw if raw.is_absolute() else self.root / raw).resolve()
        if target.suffix == ".dvc":
            target = target.with_name(target.name[: -len(".dvc")])
        if target == self.root or self.root not in target.parents:
            raise ArtifactError(
                f"{path}: not inside the work tree {self.root}; DVC tracks only paths under "
                "the repository root (copy the file there first)"
            )
        first = target.relative_to(self.root).parts[0]
        if first in (".git", ".dvc"):
            raise ArtifactError(f"{path}: inside {first}/, which DVC cannot track")
        return target

    def _rel(self, path: Path) -> Path:
        return path.relative_to(self.root)

    def _rel_from_dvc(self, path: str) -> str:
        """A path DVC printed (relative to the current directory) made relative to the root."""
        absolute = Path(os.path.abspath(path))
        try:
            return absolute.relative_to(self.root).as_posix()
        except ValueError:
            return path

    def _stage_key(self, stage: str) -> str:
        """A stage as DVC printed it (``x.dvc``, ``dvc.yaml:train``), relative to the root."""
        file, sep, name = stage.partition(":")
        return self._rel_from_dvc(file) + sep + name

    @staticmethod
    def _dvc_file(target: Path) -> Path:
        return target.with_name(target.name + ".dvc")

    def _tracked_dvc_file(self, target: Path) -> Path:
        dvc_file = self._dvc_file(target)
        if not dvc_file.is_file():
            raise ArtifactError(
                f"{self._rel(target)} is not tracked by DVC (no {self._rel(dvc_file)}): "
                "call ArtifactStore.track() on it"
            )
        return dvc_file

    def _targets(self, paths: Iterable[PathLike] | None) -> list[str] | None:
        if paths is None:
            return None
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        return [str(self._resolve(p)) for p in paths]

    def _stage(self, paths: Iterable[Path]) -> None:
        """Stage files (relative to the root) in the git index; missing ones are unstaged."""
        import pygit2

        unique = sorted({p.as_posix() for p in paths})
        if not unique:
            return
        try:
            repo = pygit2.Repository(str(self.root))
            index = repo.index
            index.read()
            for rel in unique:
                if (self.root / rel).is_file():
                    index.add(rel)
                elif rel in index:
                    index.remove(rel)
            index.write()
        except (pygit2.GitError, OSError) as exc:
            raise ArtifactError(f"cannot stage {', '.join(unique)} in git: {exc}") from exc
