"""Signed events: every event commit carries git's SSH signature, the allowed-signers file
on main names who may sign, the policy says who may write which event type, and verify and
the gates reject what a forger appends with plain git -- in the repository and in a fresh
clone of a force-pushed origin."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import clone, git, published
from evaluations import GOOD, POOR, evaluated, lineage
from modelsmith.app.facade import Modelsmith
from modelsmith.cli import cli
from modelsmith.errors import WorkspaceError
from modelsmith.events.gitstore import EVENTS_REF, GitEventStore, format_message
from modelsmith.events.signing import (
    ALLOWED_SIGNERS_PATH,
    KEY_ENV,
    AllowedSigners,
    SignaturePolicy,
    Signer,
    SigningError,
    WriterRule,
    configured_key,
    merged,
)
from modelsmith.events.types import EVENT_TYPES, EvalCompleted, Event, Promoted
from modelsmith.gitops.plan import gates_for, logged_evidence, plan
from modelsmith.specs import load_repository
from modelsmith.specs.errors import SpecError
from modelsmith.specs.models import EVENT_TYPE_NAMES
from modelsmith.specs.review import ALWAYS_REVIEWED

NAME = "rtb-quality"
POLICY = "policies/promotion.yaml"
SIGNATURES = """  signatures:
    required: {required}
    writers:
      Promoted: [reconciler]
      RolledBack: [reconciler]
      PromotionRejected: [reconciler]
      EvalCompleted: [reconciler, loop, ci]
      CandidateRegistered: [loop, ci]
      "*": [reconciler, loop, ci]
"""

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "ssh-keygen"], capture_output=True).returncode != 0,
    reason="needs OpenSSH's ssh-keygen")


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch, tmp_path):
    """No signing key unless a test sets one (not the user's git config either)."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def keys(tmp_path) -> dict[str, Path]:
    """Real ed25519 keys: the reconciler's, a loop's, and a stranger's (never listed)."""
    folder = tmp_path / "keys"
    folder.mkdir()
    out = {}
    for name in ("reconciler", "loop", "stranger"):
        path = folder / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f",
                        str(path)], check=True)
        out[name] = path
    return out


def allowed_line(principal: str, key: Path) -> str:
    return f'{principal} namespaces="git" {Path(str(key) + ".pub").read_text().strip()}\n'


def make_fork(root: Path, keys: dict[str, Path], required: bool = True) -> Path:
    """``root`` committed on main with the reconciler and the loop allowed to sign and the
    policy's ``signatures`` block; then v1's lineage signed by the loop, v1's own
    evaluation a poor one (the composite gate refuses it)."""
    (root / ".modelsmith").mkdir()
    (root / ALLOWED_SIGNERS_PATH).write_text(
        allowed_line("reconciler", keys["reconciler"]) + allowed_line("loop", keys["loop"]))
    policy = root / POLICY
    policy.write_text(policy.read_text() + SIGNATURES.format(required=str(required).lower()))
    git(root, "checkout", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "the fork")
    store = GitEventStore(root, signer=Signer(keys["loop"]))
    store.append(NAME, lineage(root, "v1", (GOOD, GOOD, POOR), actor="loop"), 0)
    return root


@pytest.fixture
def fork(demo_repo, keys):
    return make_fork(demo_repo, keys)


def ask(root: Path, **stages: str) -> None:
    """The specialist's release asks for ``stages`` (in the work tree: plan reads it)."""
    path = root / f"specialists/{NAME}.yaml"
    text = path.read_text()
    for stage, version in stages.items():
        value = f"{{version: {version}, traffic: 0.1}}" if stage == "canary" else version
        text = text.replace(f"  {stage}: null", f"  {stage}: {value}")
    path.write_text(text)


def forge(root: Path, event: Event, key: Path | None = None, parent: str | None = None,
          ) -> str:
    """Append ``event`` with plain git, as someone with push access could: blobs, tree and
    commit by hand (``git commit-tree``, signed with ``key`` if given), ``update-ref``.
    ``parent``: build on that commit instead of the tip (a rewrite)."""
    parent = parent or git(root, "rev-parse", EVENTS_REF).strip()
    count = int(git(root, "rev-list", "--count", parent))
    before = list(GitEventStore(root).read())[:count]
    seq = sum(1 for e in before if e.stream == NAME) + 1
    rec = event.recorded(NAME, seq, len(before) + 1)
    entries = []
    for name, data in sorted(rec.blobs.items()):
        oid = subprocess.run(["git", "-C", str(root), "hash-object", "-w", "--stdin"],
                             input=data, capture_output=True, check=True).stdout.decode()
        entries.append(f"100644 blob {oid.strip()}\t{name}\n")
    tree = subprocess.run(["git", "-C", str(root), "mktree"], input="".join(entries),
                          capture_output=True, text=True, check=True).stdout.strip()
    signing = (["-c", "gpg.format=ssh", "-c", f"user.signingKey={key}"] if key else [])
    commit = subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=Mallory", "-c", "user.email=m@example.com",
         *signing, "commit-tree", *(["-S"] if key else []), tree, "-p", parent,
         "-m", format_message(rec, parent)],
        capture_output=True, text=True, check=True).stdout.strip()
    git(root, "update-ref", EVENTS_REF, commit)
    return commit


def verify_cli(root: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["-C", str(root), "verify"])
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


def shadow_action(root: Path):
    with Modelsmith(root, fetch=False) as app:
        (action,) = [a for a in app.plan() if a.stage == "shadow"]
    return action


def gate(action, name: str):
    return next(g for g in action.gates if g.name == name)


# ---------------------------------------------------------------------------- round trip


def test_signed_appends_verify_and_git_itself_accepts_them(fork, keys, tmp_path):
    report = GitEventStore(fork).verify(SignaturePolicy.of({NAME: WriterRule(True)}))
    assert report.ok, report.problems
    assert (report.events, report.signed, report.unsigned) == (6, 6, 0)
    # git's own SSH signature check, with the allowed-signers file from main:
    allowed = tmp_path / "allowed"
    allowed.write_text(git(fork, "show", f"HEAD:{ALLOWED_SIGNERS_PATH}"))
    done = subprocess.run(["git", "-C", str(fork), "-c", "gpg.format=ssh", "-c",
                           f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit", EVENTS_REF],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert 'Good "git" signature for loop' in done.stderr
    shown = git(fork, "-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={allowed}",
                "log", "--show-signature", "-3", EVENTS_REF)
    assert shown.count('Good "git" signature for loop') == 3
    code, out, err = verify_cli(fork)
    assert code == 0 and out.startswith("ok: 6 events, 6 signed"), (out, err)
    assert "unsigned" not in err


def test_reconcile_signs_with_the_reconcilers_key_from_the_environment(fork, keys,
                                                                       monkeypatch):
    store = GitEventStore(fork, signer=Signer(keys["loop"]))
    store.append(NAME, [evaluated(fork, "v1", GOOD, actor="loop")], store.last_seq(NAME))
    ask(fork, shadow="v1")
    with Modelsmith(fork, fetch=False) as app, pytest.raises(WorkspaceError,
                                                             match=KEY_ENV):
        app.reconcile()  # required, and no key: refused before anything is appended
    monkeypatch.setenv(KEY_ENV, str(keys["reconciler"]))
    with Modelsmith(fork, fetch=False) as app:
        applied = [event for _action, event in app.reconcile().result.applied]
    assert [e.type for e in applied] == ["Promoted"]
    assert verify_cli(fork)[0] == 0
    with Modelsmith(fork, fetch=False) as app:
        commit = app.store.commit_of(applied[0].id)
        verdict = app.store.signatures.verdict(commit)
    assert (verdict.status, verdict.principals) == ("signed", ("reconciler",))


def test_a_public_key_with_its_private_half_in_the_agent_signs(fork, keys, tmp_path,
                                                               monkeypatch):
    sock = tmp_path / "agent.sock"
    agent = subprocess.run(["ssh-agent", "-a", str(sock)], capture_output=True, text=True)
    if agent.returncode != 0:
        pytest.skip("no ssh-agent")
    pid = int(agent.stdout.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        subprocess.run(["ssh-add", "-q", str(keys["loop"])], check=True,
                       capture_output=True)
        monkeypatch.setenv(KEY_ENV, str(keys["loop"]) + ".pub")
        store = GitEventStore(fork)
        (rec,) = store.append(NAME, [evaluated(fork, "v1", GOOD)], store.last_seq(NAME))
        verdict = store.signatures.verdict(store.commit_of(rec.id))
        assert (verdict.status, verdict.principals) == ("signed", ("loop",))
    finally:
        subprocess.run(["kill", str(pid)], check=False)


def test_git_config_ssh_signing_key_is_used_when_the_environment_names_none(demo_repo,
                                                                            keys):
    import pygit2

    repo = pygit2.Repository(str(demo_repo))
    assert configured_key(repo) is None
    git(demo_repo, "config", "user.signingKey", str(keys["loop"]))
    assert configured_key(repo) is None  # gpg.format is not ssh: not ours to use
    git(demo_repo, "config", "gpg.format", "ssh")
    assert configured_key(pygit2.Repository(str(demo_repo))) == keys["loop"]


def test_a_signing_key_that_is_not_there_is_a_clear_error(demo_repo, monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "nope"))
    store = GitEventStore(demo_repo)
    with pytest.raises(SigningError, match=f"{KEY_ENV}=.*nope: no such key file"):
        store.append(NAME, [evaluated(demo_repo, "v1")], 0)
    assert store.tip() is None
    not_a_key = tmp_path / "garbage"
    not_a_key.write_text("not a key\n")
    monkeypatch.setenv(KEY_ENV, str(not_a_key))
    with pytest.raises(SigningError, match="ssh-keygen could not sign"):
        GitEventStore(demo_repo).append(NAME, [evaluated(demo_repo, "v1")], 0)
    result = CliRunner().invoke(cli, ["-C", str(demo_repo), "evaluate", NAME, "--limit", "1"])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_without_keys_the_log_runs_and_verify_says_it_is_unsigned(demo_repo):
    store = GitEventStore(demo_repo)
    store.append(NAME, lineage(demo_repo, "v1"), 0)
    code, out, err = verify_cli(demo_repo)
    assert code == 0, err
    assert out.startswith("ok: 6 events, tip")
    assert "warning: 6 events unsigned (no policy requires signatures" in err


# ----------------------------------------------------------------------------- forgeries


def test_an_evaluation_appended_without_a_key_is_rejected(fork):
    ask(fork, shadow="v1")
    before = shadow_action(fork)
    assert before.kind == "reject" and not gate(before, "composite").passed
    forged = forge(fork, evaluated(fork, "v1", GOOD, actor="mallory"))
    code, _out, err = verify_cli(fork)
    assert code != 0
    assert f"commit {forged} (event 7): EvalCompleted on {NAME}: unsigned, and the policy " \
           "requires signed events" in err
    action = shadow_action(fork)
    assert action.kind != "promote"
    composite = gate(action, "composite")
    assert not composite.passed and "its event is not trusted: unsigned" in composite.detail


def test_without_signatures_required_the_same_forgery_would_have_passed(demo_repo, keys):
    fork = make_fork(demo_repo, keys, required=False)
    forge(fork, evaluated(fork, "v1", GOOD, actor="mallory"))
    ask(fork, shadow="v1")
    assert shadow_action(fork).kind == "promote"  # why the policy should require them
    code, _out, err = verify_cli(fork)
    assert code == 0 and "warning: 1 event unsigned" in err


def test_a_forged_results_blob_with_a_matching_digest_signed_by_a_stranger(fork, keys):
    event = evaluated(fork, "v1", GOOD, actor="loop")  # coherent results, digest and all
    with Modelsmith(fork, fetch=False) as app:
        repo = app.specs()
    forged = forge(fork, event, key=keys["stranger"])
    ask(fork, shadow="v1")
    store = GitEventStore(fork)
    assert logged_evidence(store, repo)(NAME, event.id) is None  # the evidence holds up
    code, _out, err = verify_cli(fork)
    assert code != 0
    assert (f"commit {forged} (event 7): EvalCompleted on {NAME}: signed with a key that "
            f"{ALLOWED_SIGNERS_PATH} does not list") in err
    composite = gate(shadow_action(fork), "composite")
    assert not composite.passed and "not trusted: signed with a key" in composite.detail


def test_a_promotion_signed_by_the_loop_rather_than_the_reconciler(fork, keys):
    store = GitEventStore(fork, signer=Signer(keys["loop"]))
    store.append(NAME, [evaluated(fork, "v1", GOOD, actor="loop")], store.last_seq(NAME))
    (promoted,) = store.append(NAME, [Event.new(Promoted(version="v1", stage="shadow"),
                                                actor="loop")], store.last_seq(NAME))
    commit = store.commit_of(promoted.id)
    code, _out, err = verify_cli(fork)
    assert code != 0
    assert (f"commit {commit} (event 8): Promoted on {NAME}: signed by loop, but only "
            "reconciler may write Promoted") in err
    ask(fork, canary="v1")
    with Modelsmith(fork, fetch=False) as app:
        report = app.plan_report()
        (canary,) = [a for a in report.actions if a.stage == "canary"]
    assert any("holding shadow by event" in w and "not trusted (signed by loop" in w
               for w in report.warnings), report.warnings
    order = gate(canary, "order")
    assert not order.passed and "not trusted: signed by loop" in order.detail


def test_a_signature_moved_onto_altered_content_does_not_verify(fork, keys):
    store = GitEventStore(fork)
    tip = store.tip()
    raw = subprocess.run(["git", "-C", str(fork), "cat-file", "commit", tip],
                         capture_output=True, check=True).stdout
    altered = raw.replace(b'"composite":', b'"composite":0.99,"x":', 1)
    assert altered != raw
    oid = subprocess.run(["git", "-C", str(fork), "hash-object", "-t", "commit", "-w",
                          "--stdin", "--literally"], input=altered, capture_output=True,
                         check=True).stdout.decode().strip()
    verdict = store.signatures.verdict(oid)
    assert verdict.status == "bad" and "does not verify" in verdict.detail


def test_forgeries_in_a_fresh_clone_of_a_force_pushed_origin(fork, keys, tmp_path):
    bare = published(fork, tmp_path / "origin.git")
    # Mallory rewrites the log's last event -- v1's poor evaluation -- into a good one of
    # her own, unsigned, and force-pushes: a fresh clone has no reflog or anchor to tell.
    mallory = clone(bare, tmp_path / "mallory")
    git(mallory, "fetch", "-q", "origin", f"{EVENTS_REF}:{EVENTS_REF}")
    parent = git(mallory, "rev-parse", f"{EVENTS_REF}~1").strip()
    forged = forge(mallory, evaluated(mallory, "v1", GOOD, actor="loop"), parent=parent)
    git(mallory, "push", "-q", "--force", "origin", f"{EVENTS_REF}:{EVENTS_REF}")
    fresh = clone(bare, tmp_path / "fresh")
    git(fresh, "fetch", "-q", "origin", f"{EVENTS_REF}:{EVENTS_REF}")
    assert git(fresh, "rev-parse", EVENTS_REF).strip() == forged
    code, _out, err = verify_cli(fresh)
    assert code != 0
    assert f"commit {forged} (event 6): EvalCompleted on {NAME}: unsigned" in err
    # That one problem and its count: nothing else gives the rewrite away.
    assert err.splitlines()[1:] == [
        f"commit {forged} (event 6): EvalCompleted on {NAME}: unsigned, and the policy "
        "requires signed events", "1 problems in 6 events"]
    ask(fresh, shadow="v1")
    action = shadow_action(fresh)
    assert action.kind != "promote"
    assert "not trusted: unsigned" in gate(action, "composite").detail


# ------------------------------------------------------------------ the allowed signers


def test_the_allowed_signers_are_read_from_the_commit_not_the_work_tree(fork, keys):
    forged = forge(fork, evaluated(fork, "v1", GOOD), key=keys["stranger"])
    path = fork / ALLOWED_SIGNERS_PATH
    path.write_text(path.read_text() + allowed_line("loop", keys["stranger"]))
    store = GitEventStore(fork)
    assert store.signatures.verdict(forged).status == "unknown"  # uncommitted: no effect
    assert verify_cli(fork)[0] != 0
    git(fork, "commit", "-qam", "let the stranger sign")  # a change review holds
    assert GitEventStore(fork).signatures.verdict(forged).principals == ("loop",)
    assert ".modelsmith/allowed_signers" in ALWAYS_REVIEWED


def test_a_changed_allowed_signers_file_needs_a_reviewed_merge(fork, keys):
    path = fork / ALLOWED_SIGNERS_PATH
    path.write_text(path.read_text() + allowed_line("loop", keys["stranger"]))
    git(fork, "commit", "-qam", "let the stranger sign")
    with Modelsmith(fork, fetch=False) as app:
        holds = app.review(app.specs()).holds[NAME]
    assert [h.path for h in holds] == [ALLOWED_SIGNERS_PATH]


def test_an_unreadable_allowed_signers_line_is_named():
    allowed = AllowedSigners("# comment\n\nloop ssh-ed25519 AAAA\njunk\nx y\n", "0" * 40)
    assert allowed.problems() == [
        f"{ALLOWED_SIGNERS_PATH}:4: not 'principal[,principal] [namespaces=\"git\"] "
        "key-type key'",
        f"{ALLOWED_SIGNERS_PATH}:5: not 'principal[,principal] [namespaces=\"git\"] "
        "key-type key'"]


def test_no_allowed_signers_file_leaves_signed_events_unverified(demo_repo, keys):
    git(demo_repo, "checkout", "-q", "-b", "main")
    git(demo_repo, "add", "-A")
    git(demo_repo, "commit", "-q", "-m", "the fork")
    store = GitEventStore(demo_repo, signer=Signer(keys["loop"]))
    (rec,) = store.append(NAME, [evaluated(demo_repo, "v1")], 0)
    verdict = store.signatures.verdict(store.commit_of(rec.id))
    assert verdict.status == "unknown" and "has no .modelsmith/allowed_signers" in \
        verdict.detail
    code, _out, err = verify_cli(demo_repo)
    assert code == 0 and "not verified by the allowed signers" in err


# ------------------------------------------------------------------------------- policy


def test_the_policy_names_only_registered_event_types(demo_files):
    assert set(EVENT_TYPE_NAMES) == {name for name, _ in EVENT_TYPES}
    policy = demo_files / POLICY
    text = policy.read_text()
    policy.write_text(text + "  signatures:\n    writers:\n      Promotd: [reconciler]\n")
    with pytest.raises(SpecError) as err:
        load_repository(demo_files)
    assert "promotion.yaml" in str(err.value) and "signatures.writers" in str(err.value)
    assert "unknown event type 'Promotd'" in str(err.value)
    policy.write_text(text + "  signatures:\n    writers:\n      promoted: [reconciler]\n")
    with pytest.raises(SpecError, match="did you mean Promoted"):
        load_repository(demo_files)
    policy.write_text(text + "  signatures:\n    writers:\n      Promoted: ['a b']\n")
    with pytest.raises(SpecError, match="not a principal"):
        load_repository(demo_files)
    policy.write_text(text + "  signatures:\n    required: maybe\n")
    with pytest.raises(SpecError, match="required"):
        load_repository(demo_files)
    policy.write_text(text)
    spec = load_repository(demo_files).policies["default"].spec
    assert spec.signatures.required is False and spec.signatures.writers == {}


def test_writer_rules_and_the_fleet_wide_rule():
    from modelsmith.events.signing import Verdict

    rule = WriterRule(True, {"Promoted": ("reconciler",), "*": ("loop", "reconciler")})
    loop = Verdict("signed", ("loop",))
    assert rule.judge(loop, "EvalCompleted") is None
    assert rule.judge(loop, "Promoted") == "signed by loop, but only reconciler may write " \
                                           "Promoted"
    assert "unsigned" in rule.judge(Verdict("unsigned"), "EvalCompleted")
    assert WriterRule(False).judge(Verdict("unsigned"), "Promoted") is None
    fleet = merged([rule, WriterRule(False, {"Promoted": ("ci",)})])
    assert fleet.required and fleet.allowed("Promoted") == ("ci", "reconciler")
    assert fleet.allowed("EvalCompleted") is None  # the second rule admits anyone there
    policy = SignaturePolicy.of({"a": rule})
    assert policy.required and policy.rule("fleet").required


def test_the_pure_plan_takes_the_signature_check_with_the_evidence(fork):
    from modelsmith.gitops.plan import SignedEvidence

    forge(fork, evaluated(fork, "v1", GOOD))
    ask(fork, shadow="v1")
    with Modelsmith(fork, fetch=False) as app:
        repo = app.specs()
        desired, fleet = app._desired(repo), app.fleet()
        trusting = plan(desired, fleet)
        signed = SignedEvidence(lambda *_: None, lambda _s, _e: "not ours")
        refusing = plan(desired, fleet, evidence=signed)
        state = fleet.specialists[NAME]
        stage = desired[NAME].policy.stages[0]
        gates = gates_for(NAME, desired[NAME], state, stage, "v1", lambda *_: None,
                          lambda *_: None, signed)
    assert [a.kind for a in trusting if a.stage == "shadow"] == ["promote"]
    assert [a.kind for a in refusing if a.stage == "shadow"] != ["promote"]
    assert gates[0].name == "version" and "registration" in gates[0].detail


# ---------------------------------------------------------------------------- workflows


@pytest.mark.parametrize("workflow", [".github/workflows/reconcile.yml",
                                      "engine/modelsmith/gitops/templates/reconcile.yml"])
def test_the_reconcile_workflow_signs_with_the_secret_key(workflow, fork, keys, tmp_path,
                                                          monkeypatch):
    """The workflow's step, run as Actions would: the secret becomes a 0600 key file named
    in $GITHUB_ENV, and events appended with it verify as the reconciler's."""
    import os
    import stat

    import yaml

    from conftest import REPO_ROOT

    steps = yaml.safe_load((REPO_ROOT / workflow).read_text())["jobs"]["reconcile"]["steps"]
    names = [s.get("name", "") for s in steps]
    index = next(i for i, n in enumerate(names) if "signing key" in n)
    assert index < names.index("Reconcile and share the event log")
    step = steps[index]
    assert step["env"]["SIGNING_KEY"] == "${{ secrets.MODELSMITH_SIGNING_KEY }}"
    runner, env_file = tmp_path / "runner", tmp_path / "github_env"
    runner.mkdir()
    env = {**os.environ, "RUNNER_TEMP": str(runner), "GITHUB_ENV": str(env_file)}
    done = subprocess.run(["bash", "-e", "-c", step["run"]], capture_output=True, text=True,
                          env={**env, "SIGNING_KEY": ""})
    assert done.returncode == 0 and "::warning::no MODELSMITH_SIGNING_KEY secret" in \
        done.stdout
    assert not env_file.exists()
    secret = keys["reconciler"].read_text().rstrip("\n")  # as a pasted secret may come
    done = subprocess.run(["bash", "-e", "-c", step["run"]], capture_output=True, text=True,
                          env={**env, "SIGNING_KEY": secret})
    assert done.returncode == 0, done.stderr
    name, _, value = env_file.read_text().strip().partition("=")
    assert name == KEY_ENV and stat.S_IMODE(os.stat(value).st_mode) == 0o600
    monkeypatch.setenv(KEY_ENV, value)
    store = GitEventStore(fork)
    (rec,) = store.append(NAME, [Event.new(Promoted(version="v1", stage="shadow"),
                                           actor="reconcile")], store.last_seq(NAME))
    assert store.signatures.verdict(store.commit_of(rec.id)).principals == ("reconciler",)
    assert verify_cli(fork)[0] == 0


@pytest.mark.parametrize("forgery", ["repeated", "relabelled"])
def test_a_repeated_or_relabelled_evaluation_made_with_plain_git_never_counts(
        demo_repo, keys, tmp_path, forgery):
    """Without signatures required, the composite gate alone still refuses what issue
    17's probe forged: v102's good evaluation appended again (a new event id, the same
    run), or relabelled as v1's -- with plain git, pushed, and read in a fresh clone."""
    fork = make_fork(demo_repo, keys, required=False)
    bare = published(fork, tmp_path / "origin.git")
    mallory = clone(bare, tmp_path / "mallory")
    git(mallory, "fetch", "-q", "origin", f"{EVENTS_REF}:{EVENTS_REF}")
    good = next(e for e in GitEventStore(mallory).read(NAME)
                if e.type == "EvalCompleted" and e.data["version"] == "v102")
    data = dict(good.data)
    if forgery == "relabelled":
        data.update(version="v1", model="v1")
    copy = Event.new(EvalCompleted.model_validate(data), actor="mallory",
                     evidence=GitEventStore(mallory).evidence(good.id))
    forge(mallory, copy)
    git(mallory, "push", "-q", "origin", f"{EVENTS_REF}:{EVENTS_REF}")
    fresh = clone(bare, tmp_path / "fresh")
    git(fresh, "fetch", "-q", "origin", f"{EVENTS_REF}:{EVENTS_REF}")
    ask(fresh, shadow="v1")
    action = shadow_action(fresh)
    assert action.kind != "promote", action
    composite = gate(action, "composite")
    assert not composite.passed and composite.numbers["ignored"] >= 1, composite.detail
