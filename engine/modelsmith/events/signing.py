"""Who wrote an event: git's SSH commit signatures on the event log.

Every event commit is signed, when a key is configured, the way ``git commit -S`` signs
with ``gpg.format=ssh``: the commit object carries a ``gpgsig`` header holding an
``ssh-keygen -Y sign -n git`` signature of the rest of the object, so ``git log
--show-signature`` and ``git verify-commit`` (with ``gpg.ssh.allowedSignersFile``) check
our commits as they check anyone's.

The key: ``MODELSMITH_SIGNING_KEY`` (a private key file, or a public key whose private
half the ssh agent holds), else git's ``user.signingKey`` when ``gpg.format`` is ``ssh``.
No key: events are written unsigned, as before, and ``verify`` counts them.

Who may sign: the allowed-signers file at :data:`ALLOWED_SIGNERS_PATH` (git's format,
``principal[,principal] [options] key-type key``), read from the checked-out branch's
commit -- never from the work tree, so an uncommitted edit changes no verdict, and a change
to it is a reviewed change like any other on main. Which signer may write which event type
is the policies' ``signatures`` block (:class:`WriterRule`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pygit2

from modelsmith.errors import ModelsmithError
from modelsmith.events.cachefile import write_cache

ALLOWED_SIGNERS_PATH = ".modelsmith/allowed_signers"
KEY_ENV = "MODELSMITH_SIGNING_KEY"
NAMESPACE = "git"  # what git signs and verifies commits under
_CACHE_FORMAT = 1
_TIMEOUT = 60  # seconds for one ssh-keygen (an agent that never answers)


class SigningError(ModelsmithError):
    """A signing key that cannot be used, or ssh-keygen missing; the message says why."""


def ssh_keygen() -> str | None:
    """The ``ssh-keygen`` executable (OpenSSH), or None."""
    return shutil.which("ssh-keygen")


def _need_keygen(what: str) -> str:
    found = ssh_keygen()
    if found is None:
        raise SigningError(f"{what} needs ssh-keygen (OpenSSH 8.2 or later) on PATH")
    return found


# ------------------------------------------------------------------------------ signing


def configured_key(repo: pygit2.Repository) -> Path | None:
    """The key events are signed with: ``MODELSMITH_SIGNING_KEY``, else ``user.signingKey``
    with ``gpg.format=ssh``; None when neither is set. :class:`SigningError` when the one
    named is not a file."""
    named = os.environ.get(KEY_ENV, "").strip()
    where = KEY_ENV
    if not named:
        config = repo.config
        fmt = _config(config, "gpg.format")
        named = (_config(config, "user.signingKey") or "").strip()
        if fmt != "ssh" or not named:
            return None
        where = "git config user.signingKey"
        if named.startswith("key::"):  # a literal public key: the agent signs with it
            literal = Path(repo.path) / "modelsmith" / "signing-key.pub"
            literal.parent.mkdir(parents=True, exist_ok=True)
            literal.write_text(named[len("key::"):].strip() + "\n")
            return literal
    path = Path(named).expanduser()
    if not path.is_file():
        raise SigningError(f"{where}={named}: no such key file (a private key, or a public "
                           "key whose private half the ssh agent holds)")
    return path


def _config(config: pygit2.Config, name: str) -> str | None:
    try:
        return config[name]
    except (KeyError, ValueError):
        return None


class Signer:
    """Signs commit objects with one SSH key through ``ssh-keygen -Y sign``."""

    def __init__(self, key: str | os.PathLike[str]) -> None:
        self.key = Path(key)
        self._keygen = _need_keygen(f"signing events with {self.key}")

    def sign(self, content: bytes) -> str:
        """The armored SSH signature of ``content`` (namespace ``git``)."""
        try:
            done = subprocess.run([self._keygen, "-Y", "sign", "-f", str(self.key),
                                   "-n", NAMESPACE], input=content, capture_output=True,
                                  timeout=_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise SigningError(f"ssh-keygen did not sign with {self.key} within {_TIMEOUT}s "
                               "(an ssh agent that does not answer?)") from None
        if done.returncode != 0 or b"BEGIN SSH SIGNATURE" not in done.stdout:
            why = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
            raise SigningError(f"ssh-keygen could not sign with {self.key}: {why} (a "
                               "passphrase-protected key must be loaded into ssh-agent and "
                               "named by its .pub file)")
        return done.stdout.decode()


def signer_for(repo: pygit2.Repository) -> Signer | None:
    """The :class:`Signer` of the configured key (:func:`configured_key`), or None."""
    key = configured_key(repo)
    return None if key is None else Signer(key)


# ------------------------------------------------------------------------ allowed signers


@dataclass(frozen=True)
class AllowedSigners:
    """The allowed-signers file of one commit of the checked-out branch."""

    text: str = ""
    oid: str | None = None  # its blob id (None: the branch has no such file)
    commit: str | None = None  # the commit it was read from

    @classmethod
    def at_head(cls, repo: pygit2.Repository) -> AllowedSigners:
        """The file as the checked-out branch's commit holds it (the work tree is not
        read: an uncommitted edit changes nothing)."""
        try:
            head = repo.head.peel(pygit2.Commit)
        except (pygit2.GitError, KeyError, ValueError):
            return cls()
        try:
            entry = head.tree[ALLOWED_SIGNERS_PATH]
        except KeyError:
            return cls(commit=str(head.id))
        blob = repo[entry.id]
        if not isinstance(blob, pygit2.Blob):
            return cls(commit=str(head.id))
        return cls(blob.data.decode(errors="replace"), str(entry.id), str(head.id))

    def problems(self) -> list[str]:
        """Lines that are not ``principals [options] key-type key``, each located."""
        out = []
        for number, line in enumerate(self.text.splitlines(), start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            keys = [i for i, f in enumerate(fields) if f.startswith(("ssh-", "ecdsa-", "sk-"))]
            if not keys or keys[0] == 0 or keys[0] + 1 >= len(fields):
                out.append(f"{ALLOWED_SIGNERS_PATH}:{number}: not 'principal[,principal] "
                           "[namespaces=\"git\"] key-type key'")
        return out

    def principals(self) -> set[str]:
        names: set[str] = set()
        for line in self.text.splitlines():
            fields = line.split()
            if fields and not fields[0].startswith("#"):
                names.update(p for p in fields[0].split(",") if p)
        return names


# ------------------------------------------------------------------------------ verdicts

Status = Literal["signed", "unsigned", "bad", "unknown"]


@dataclass(frozen=True)
class Verdict:
    """What one commit's signature says: ``signed`` by ``principals`` (verified against
    the allowed signers), ``unsigned``, ``bad`` (does not verify), or ``unknown`` (a key
    the allowed-signers file does not list)."""

    status: Status
    principals: tuple[str, ...] = ()
    detail: str = ""

    def describe(self) -> str:
        if self.status == "signed":
            return f"signed by {', '.join(self.principals)}"
        if self.status == "unsigned":
            return "unsigned"
        return self.detail or self.status


class SignatureChecker:
    """Verdicts on commits' signatures against one :class:`AllowedSigners`, through
    ``ssh-keygen -Y find-principals`` and ``-Y verify``; cached by commit id under the git
    directory (per allowed-signers blob: a changed file judges again)."""

    def __init__(self, repo: pygit2.Repository, allowed: AllowedSigners | None = None,
                 cache_dir: Path | None = None) -> None:
        self.repo = repo
        self.allowed = allowed if allowed is not None else AllowedSigners.at_head(repo)
        self.cache_dir = cache_dir if cache_dir is not None else Path(repo.path) / "modelsmith"
        self._verdicts: dict[str, Verdict] | None = None
        self._unsaved = 0
        self._file: Path | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # -- the cache -----------------------------------------------------------------

    def _cache_path(self) -> Path:
        return self.cache_dir / f"signatures-{self.allowed.oid or 'none'}.json"

    def _load(self) -> dict[str, Verdict]:
        if self._verdicts is None:
            self._verdicts = {}
            try:
                raw = json.loads(self._cache_path().read_text())
                if raw.get("format") == _CACHE_FORMAT:
                    for commit, (status, principals, detail) in raw["verdicts"].items():
                        self._verdicts[commit] = Verdict(status, tuple(principals), detail)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self._verdicts = {}
        return self._verdicts

    def save(self) -> None:
        """Write the verdict cache (atomic; a read-only repository just judges again)."""
        if not self._unsaved or self._verdicts is None:
            return
        self._unsaved = 0
        body = {"format": _CACHE_FORMAT, "verdicts": {
            c: [v.status, list(v.principals), v.detail] for c, v in self._verdicts.items()}}
        write_cache(self._cache_path(), lambda fh: fh.write(json.dumps(body).encode()))

    def close(self) -> None:
        self.save()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- judging -------------------------------------------------------------------

    def verdict(self, commit_id: str) -> Verdict:
        """The verdict on commit ``commit_id``'s signature (cached)."""
        verdicts = self._load()
        found = verdicts.get(commit_id)
        if found is None:
            found = verdicts[commit_id] = self._judge(commit_id)
            self._unsaved += 1
            if self._unsaved >= 256:
                self.save()
        return found

    def _judge(self, commit_id: str) -> Verdict:
        commit = self.repo.get(commit_id)
        if not isinstance(commit, pygit2.Commit):
            return Verdict("bad", detail=f"commit {commit_id} is not in the repository")
        signature, payload = commit.gpg_signature
        if not signature:
            return Verdict("unsigned")
        if b"BEGIN SSH SIGNATURE" not in signature:
            return Verdict("bad", detail="signed, but not with an SSH key (gpg.format=ssh)")
        if self.allowed.oid is None:
            return Verdict("unknown", detail=f"signed, but the checked-out branch has no "
                                             f"{ALLOWED_SIGNERS_PATH} to check it against")
        keygen = _need_keygen("checking event signatures")
        folder = self._folder()
        sig = folder / "commit.sig"
        sig.write_bytes(signature)
        when = f"-Overify-time={_ssh_time(commit.commit_time)}"
        found = _run([keygen, "-Y", "find-principals", "-s", str(sig), "-f",
                      str(self._allowed_file()), when])
        principals = tuple(p for p in found.stdout.decode(errors="replace").split() if p)
        if found.returncode != 0 or not principals:
            return Verdict("unknown", detail="signed with a key that "
                                             f"{ALLOWED_SIGNERS_PATH} does not list")
        checked = _run([keygen, "-Y", "verify", "-f", str(self._allowed_file()), "-I",
                        principals[0], "-n", NAMESPACE, "-s", str(sig), when], payload)
        if checked.returncode != 0:
            return Verdict("bad", principals, detail=f"a signature by {principals[0]} that "
                                                     "does not verify (the commit was altered "
                                                     "after signing, or forged)")
        return Verdict("signed", principals)

    def _folder(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="modelsmith-sig-")
        return Path(self._tmp.name)

    def _allowed_file(self) -> Path:
        if self._file is None:
            self._file = self._folder() / "allowed_signers"
            self._file.write_text(self.allowed.text)
        return self._file


def _ssh_time(stamp: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(stamp, UTC).strftime("%Y%m%d%H%M%SZ")


def _run(argv: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(argv, input=stdin if stdin is not None else b"",
                              capture_output=True, timeout=_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, b"", b"timed out")


# ------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class WriterRule:
    """A policy's ``signatures`` block: whether events need a signature, and which
    principals (names in the allowed-signers file) may sign which event types (``*``: any
    type not named). No writers: any listed signer may write anything."""

    required: bool = False
    writers: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)

    def allowed(self, event_type: str) -> tuple[str, ...] | None:
        found = self.writers.get(event_type, self.writers.get("*"))
        return None if found is None else tuple(found)

    def judge(self, verdict: Verdict, event_type: str) -> str | None:
        """Why an event with this signature may not be trusted under this rule (None:
        it may). Nothing is refused unless the rule requires signatures."""
        if not self.required:
            return None
        if verdict.status != "signed":
            return ("unsigned, and the policy requires signed events"
                    if verdict.status == "unsigned" else verdict.describe())
        allowed = self.allowed(event_type)
        if allowed is not None and not set(verdict.principals) & set(allowed):
            who = ", ".join(verdict.principals)
            may = ", ".join(allowed) or "nobody"
            return f"signed by {who}, but only {may} may write {event_type}"
        return None

    @classmethod
    def of(cls, block: Any) -> WriterRule:
        """From a policy's ``signatures`` block (anything with ``required`` and
        ``writers``), or None for the default."""
        if block is None:
            return cls()
        return cls(bool(block.required),
                   {k: tuple(v) for k, v in dict(block.writers or {}).items()})


@dataclass(frozen=True)
class SignaturePolicy:
    """The writer rule of each stream (a specialist: its policy's), and of every other
    stream (``fleet``): required when any policy requires, writers the union of theirs."""

    streams: Mapping[str, WriterRule] = field(default_factory=dict)
    default: WriterRule = field(default_factory=WriterRule)

    def rule(self, stream: str) -> WriterRule:
        return self.streams.get(stream, self.default)

    @property
    def required(self) -> bool:
        return self.default.required or any(r.required for r in self.streams.values())

    @classmethod
    def of(cls, streams: Mapping[str, WriterRule]) -> SignaturePolicy:
        return cls(dict(streams), merged(streams.values()))


def merged(rules: Iterable[WriterRule]) -> WriterRule:
    """One rule admitting what any of ``rules`` admits, required if any requires."""
    rules = list(rules)
    kinds = {kind for rule in rules for kind in rule.writers}
    writers: dict[str, tuple[str, ...] | None] = {}
    for kind in kinds | {"*"}:
        names: set[str] = set()
        for rule in rules:
            allowed = rule.allowed(kind) if kind != "*" else rule.writers.get("*")
            if allowed is None:
                names = None  # type: ignore[assignment]
                break
            names.update(allowed)
        writers[kind] = None if names is None else tuple(sorted(names))
    if not rules or writers.get("*") is None:
        writers.pop("*", None)
    return WriterRule(any(r.required for r in rules), writers)  # type: ignore[arg-type]
