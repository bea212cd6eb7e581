"""A cloud DVC remote for real: S3 on a real S3-protocol server (moto's, in its own process)
on 127.0.0.1, which checks credentials as AWS does (IAM keys, signatures).

Training in a fork pushes the candidate's dataset and weights to ``s3://``; a fresh clone of
the fork pulls the weights and evaluates them, with the remote and the credentials taken
from the environment only. Every way a cloud remote goes wrong that a user can fix (no
credentials, refused credentials, no bucket, no server, no plugin, a secret in the
committed config) is one clear message naming what to set.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pygit2
import pytest
from click.testing import CliRunner

from conftest import REPO_ROOT, clone, git, published
from modelsmith.app import Modelsmith
from modelsmith.artifacts.adapters import is_weights_folder
from modelsmith.artifacts.dvc import ArtifactError, ArtifactStore
from modelsmith.cli import cli

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    key_id: str
    secret: str

    def client(self, key_id: str | None = None, secret: str | None = None):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=key_id or self.key_id,
                            aws_secret_access_key=secret or self.secret)

    def bucket(self) -> str:
        """A new, empty bucket of its own."""
        name = f"team-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listed.get("Contents", []))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(port: int, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's server on a free loopback port, checking credentials: its first requests
    (unauthenticated) make an IAM user allowed s3:* and its access key. moto[server] and
    dvc-s3 come with the dev extra."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    environ.update(INITIAL_NO_AUTH_ACTION_COUNT="3", NO_PROXY="127.0.0.1,localhost",
                   no_proxy="127.0.0.1,localhost")
    server_log = tmp_path_factory.mktemp("moto") / "server.log"
    for _attempt in range(3):  # another process may take the free port first
        port = _free_port()
        with server_log.open("ab") as out:
            process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H",
                                        "127.0.0.1", "-p", str(port)], env=environ,
                                       stdout=out, stderr=subprocess.STDOUT)
        if _wait_for(port, process):
            break
        process.kill()
        process.wait()
    else:
        pytest.fail(f"moto's server did not start on 127.0.0.1:\n{server_log.read_text()}")
    try:
        endpoint = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION,
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="ci")
        iam.put_user_policy(UserName="ci", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="ci")["AccessKey"]
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def aws(s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The environment a CI job gives: the server's endpoint and a key, nothing from this
    machine's ~/.aws or an instance profile; DVC's and Modelsmith's folders in tmp_path."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws" / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws" / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(tmp_path / "dvc-global"))
    monkeypatch.setenv("DVC_SYSTEM_CONFIG_DIR", str(tmp_path / "dvc-system"))
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MODELSMITH_DVC_REMOTE", raising=False)
    return s3


def run(repo: Path, *args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["-C", str(repo), *args])


def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")


def test_train_pushes_to_s3_and_a_fresh_clone_pulls_and_evaluates_it(
        aws: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = aws.bucket()
    remote = f"s3://{bucket}/modelsmith"
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", remote)
    fork = tmp_path / "fork"
    Modelsmith.fork(REPO_ROOT, fork)
    git(fork, "config", "user.name", "Dana")
    git(fork, "config", "user.email", "dana@example.com")
    assert run(fork, "eval", "rtb-quality", "--model", "tiny-test", "--threads", "1",
               "--min-composite", "0").exit_code == 0
    trained = run(fork, "train", "rtb-quality", "--model", "tiny-test", "--profile",
                  "cpu-tiny", "--steps", "1", "--sft-steps", "1", "--json")
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["version"] == "v1"
    (registered,) = [e for e in Modelsmith.open(fork).store.read("rtb-quality")
                     if e.type == "CandidateRegistered"]
    weights_hash = registered.data["lineage"]["weights_hash"]

    # The bytes are on S3 (DVC's content-addressed layout under the prefix); the committed
    # config names no remote and holds no secret: the remote and the key are the machine's.
    stored = aws.keys(bucket)
    assert stored and all(k.startswith("modelsmith/files/md5/") for k in stored)
    assert f"modelsmith/files/md5/{weights_hash[:2]}/{weights_hash[2:]}" in stored
    committed = git(fork, "show", "HEAD:.dvc/config")
    assert "s3://" not in committed and aws.secret not in committed
    assert aws.key_id not in committed
    assert aws.secret not in (fork / ".dvc" / "config.local").read_text()

    origin = published(fork, tmp_path / "origin.git")
    fresh = clone(origin, tmp_path / "fresh")
    assert not (fresh / "models/rtb-quality/v1").exists()

    # Without credentials: one line naming what to set; nothing pulled.
    no_credentials(monkeypatch)
    refused = run(fresh, "eval", "rtb-quality", "--model", "v1", "--threads", "1",
                  "--min-composite", "0")
    assert refused.exit_code == 1, refused.output
    assert "Traceback" not in refused.output
    assert "AWS_ACCESS_KEY_ID" in refused.output and remote in refused.output
    assert "dvc remote modify --local" in refused.output
    assert not is_weights_folder(fresh / "models/rtb-quality/v1")

    # Credentials the server does not know: refused, named.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    wrong = run(fresh, "eval", "rtb-quality", "--model", "v1", "--threads", "1",
                "--min-composite", "0")
    assert wrong.exit_code == 1 and "Traceback" not in wrong.output
    # (DVC asks with HEAD requests, whose 403 answer carries no reason.)
    assert "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in wrong.output
    assert remote in wrong.output
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", aws.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    wrong = run(fresh, "eval", "rtb-quality", "--model", "v1", "--threads", "1",
                "--min-composite", "0")
    assert wrong.exit_code == 1 and "check AWS_ACCESS_KEY_ID" in wrong.output

    # The real key: pulled from S3, evaluated, and the evaluation measured the registered
    # weights.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws.secret)
    evaluated = run(fresh, "eval", "rtb-quality", "--model", "v1", "--threads", "1",
                    "--min-composite", "0", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert "pulling v1's weights from the DVC remote" in evaluated.output
    assert is_weights_folder(fresh / "models/rtb-quality/v1")
    store = ArtifactStore(fresh)
    assert store.hash_of("models/rtb-quality/v1") == weights_hash
    assert store.verify("models/rtb-quality/v1")
    assert store.remote_url() == remote  # adopted from the environment, machine-local
    assert git(fresh, "status", "--porcelain") == ""
    (measured,) = [e for e in Modelsmith.open(fresh).store.read("rtb-quality")
                   if e.type == "EvalCompleted" and e.data.get("version") == "v1"]
    assert measured.data["weights_hash"] == weights_hash


def tracked_file(root: Path, text: str = "weights\n") -> ArtifactStore:
    pygit2.init_repository(str(root))
    path = root / "models" / "w.bin"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    store = ArtifactStore(root)
    store.ensure_initialised()
    store.track(path)
    return store


def test_a_committed_s3_url_and_endpoint_serve_every_clone(
        aws: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other way to point a fork at S3: the URL and the S3-compatible endpoint (no
    secret) committed in .dvc/config, the key in the environment."""
    bucket = aws.bucket()
    team = tmp_path / "team"
    pygit2.init_repository(str(team), initial_head="main")
    store = ArtifactStore(team)
    store.ensure_initialised(remote=f"s3://{bucket}/dvc")
    from dvc.repo import Repo

    with Repo(str(team)) as repo, repo.config.edit("repo") as conf:
        conf["remote"]["modelsmith"]["endpointurl"] = aws.endpoint
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    (team / "data.txt").write_text("rows\n")
    store.track("data.txt")
    assert store.status() == {"data.txt": "not pushed"}
    assert store.push() == 1
    assert store.status() == {}
    git(team, "add", "-A")
    git(team, "commit", "-q", "-m", "data")
    config = (team / ".dvc" / "config").read_text()
    assert f"s3://{bucket}/dvc" in config and aws.endpoint in config
    assert aws.key_id not in config and aws.secret not in config

    mine = tmp_path / "mine"
    subprocess.run(["git", "clone", "-q", str(team), str(mine)], check=True)
    assert ArtifactStore(mine).pull() == 1
    assert (mine / "data.txt").read_text() == "rows\n"


def test_a_missing_bucket_and_an_unreachable_endpoint_say_so(
        aws: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", "s3://no-such-bucket/dvc")
    store = tracked_file(tmp_path / "team")
    with pytest.raises(ArtifactError) as missing:
        store.push()
    assert str(missing.value) == (
        f"dvc push: remote 'modelsmith' (s3://no-such-bucket/dvc at {aws.endpoint}): the "
        "bucket 'no-such-bucket' does not exist: create it, or point the remote at an "
        "existing one ($MODELSMITH_DVC_REMOTE, or `dvc remote modify modelsmith url "
        "s3://BUCKET/PATH`)")

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dead)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(ArtifactError, match=r"cannot reach http://127\.0\.0\.1:\d+: check "
                                            r"the server is up") as down:
        store.pull()
    assert "$AWS_ENDPOINT_URL_S3" in str(down.value) and "dvc pull" in str(down.value)


def test_missing_or_wrong_credentials_say_what_to_set(
        aws: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = aws.bucket()
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", f"s3://{bucket}/dvc")
    store = tracked_file(tmp_path / "team")
    no_credentials(monkeypatch)
    with pytest.raises(ArtifactError) as caught:
        store.push()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"dvc push: remote 'modelsmith' (s3://{bucket}/dvc at ")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                 "dvc remote modify --local modelsmith", "never in .dvc/config"):
        assert name in message
    assert aws.keys(bucket) == []
    # A profile that does not exist is named as such.
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    with pytest.raises(ArtifactError, match=r"nobody.*fix AWS_PROFILE or unset it"):
        store.push()
    monkeypatch.delenv("AWS_PROFILE")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws.secret)
    (store.root / "models" / "v1").mkdir()  # a folder too
    (store.root / "models" / "v1" / "a.bin").write_text("a")
    store.track("models/v1")
    for operation in ("push", "status", "pull"):
        with pytest.raises(ArtifactError) as caught:
            getattr(store, operation)()
        assert str(caught.value) == (
            f"dvc {operation}: remote 'modelsmith' (s3://{bucket}/dvc at {aws.endpoint}): the "
            "server answered 403 Forbidden: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) in the environment, and that they may list, read and write "
            f"s3://{bucket} (s3:ListBucket, s3:GetObject, s3:PutObject)")
    assert aws.keys(bucket) == []


def test_an_answer_that_names_its_reason_is_named() -> None:
    """A listing's error carries its code (a HEAD's does not): it is named as the server
    said it, through however many exceptions DVC and s3fs wrap it in."""
    from botocore.exceptions import ClientError

    from modelsmith.artifacts.dvc import _cloud_failure, _Remote

    remote = _Remote("modelsmith", "s3://team/dvc", "http://127.0.0.1:9000")
    for code, says in (("InvalidAccessKeyId", "refused the credentials (InvalidAccessKeyId)"),
                       ("SignatureDoesNotMatch", "refused the credentials (Signature"),
                       ("AccessDenied", "access denied: the credentials may not list"),
                       ("NoSuchBucket", "the bucket 'team' does not exist")):
        error = ClientError({"Error": {"Code": code, "Message": "no"}}, "ListObjectsV2")
        try:
            try:
                raise error
            except ClientError as inner:
                raise PermissionError("wrapped") from inner
        except PermissionError as outer:
            message = _cloud_failure("push", RuntimeError("1 files failed"), remote, [outer])
        assert message is not None and says in message, (code, message)
        assert message.startswith("dvc push: remote 'modelsmith' (s3://team/dvc at "
                                  "http://127.0.0.1:9000): ")
    assert _cloud_failure("push", ValueError("something else"), remote) is None


def test_secrets_never_go_into_a_committed_config(
        aws: S3Server, tmp_path: Path) -> None:
    store = tracked_file(tmp_path / "team")
    with pytest.raises(ArtifactError, match=r"carries a password in its URL") as caught:
        store.ensure_initialised(remote="https://dana:hunter2@dvc.example.com/store")
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in (store.root / ".dvc" / "config").read_text()
    with pytest.raises(ArtifactError, match="not a valid URL"):
        store.ensure_initialised(remote="https://[::1/store")

    # A key someone wrote into .dvc/config by hand: no push or pull until it is moved.
    store.ensure_initialised(remote=f"s3://{aws.bucket()}/dvc")
    from dvc.repo import Repo

    with Repo(str(store.root)) as repo, repo.config.edit("repo") as conf:
        conf["remote"]["modelsmith"]["secret_access_key"] = aws.secret
    for operation in (store.push, store.pull):
        with pytest.raises(ArtifactError) as caught:
            operation()
        message = str(caught.value)
        assert message.startswith(".dvc/config: remote 'modelsmith' holds secret_access_key")
        assert "`dvc remote modify --unset modelsmith secret_access_key`" in message
        assert aws.secret not in message


def test_a_clone_with_no_remote_anywhere_names_the_variable(
        aws: S3Server, tmp_path: Path) -> None:
    """The remote was machine-local (.dvc/config.local) and this machine sets none."""
    store = tracked_file(tmp_path / "team")
    git(store.root, "add", "-A")
    git(store.root, "commit", "-q", "-m", "data")
    fresh = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(store.root), str(fresh)], check=True)
    with pytest.raises(ArtifactError, match=r"no DVC remote is configured\. Set "
                                            r"\$MODELSMITH_DVC_REMOTE"):
        ArtifactStore(fresh).pull()


def test_without_dvc_s3_the_message_names_the_extra(
        aws: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", f"s3://{aws.bucket()}/dvc")
    store = tracked_file(tmp_path / "team")
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if dvc-s3's s3fs were not installed
    with pytest.raises(ArtifactError) as caught:
        store.push()
    assert str(caught.value) == (
        f"dvc push: the remote {os.environ['MODELSMITH_DVC_REMOTE']} needs DVC's s3 plugin, "
        "which is not installed: pip install 'modelsmith[s3]' (dvc-s3)")
