"""A small fake of GitHub's REST API on 127.0.0.1, for PyGithub: one repository backed by a
real bare git repository. Pull requests are opened on pushed branches, listed, reviewed, and
merged for real with the method asked for, as GitHub does it: ``merge`` (a ``--no-ff`` merge
commit with GitHub's message ``Merge pull request #N from owner/branch``), ``squash`` (one
new commit with the pull request's whole change, ``Title (#N)``) or ``rebase`` (the pull
request's commits replayed on the base branch as new commits); ``merge_commit_sha`` is the
merge or squash commit, or the last rebased one. ``GET .../commits/{sha}/pulls`` answers as
GitHub does: a pull request for its head commits (when it was opened, and as they are now or
were when merged) and, once merged, for the commits its merge made on the base. Each token
is a user. Responses carry the keys PyGithub reads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

NOW = "2026-11-26T12:00:00Z"


MERGE_METHODS = ("merge", "squash", "rebase")


def _git(cwd: Path, *args: str) -> str:
    # GitHub commits as itself, at its own time: a rebase always makes new commits.
    env = {**os.environ, "GIT_COMMITTER_DATE": NOW}
    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=GitHub",
                           "-c", "user.email=noreply@github.com", *args],
                          check=True, capture_output=True, text=True, env=env).stdout.strip()


class FakeGitHub:
    def __init__(self, bare: Path, full_name: str, tokens: dict[str, str],
                 teams: dict[str, list[str]] | None = None) -> None:
        self.bare, self.full_name, self.tokens = bare, full_name, tokens
        self.teams = teams or {}  # "org/slug" -> member logins
        self.pulls: dict[int, dict[str, Any]] = {}
        self.reviews: dict[int, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}") if length else {}
                token = (self.headers.get("Authorization") or "").split(" ")[-1]
                user = fake.tokens.get(token)
                base = f"http://{self.headers['Host']}"
                path, _, query = self.path.partition("?")
                with fake.lock:
                    status, body = fake.route(method, path, payload, user, base,
                                              dict(parse_qsl(query)))
                self._reply(status, body)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- objects as GitHub writes them -----------------------------------------------------

    def user(self, login: str, base: str) -> dict[str, Any]:
        u = f"{base}/users/{login}"
        return {"login": login, "id": abs(hash(login)) % 10**6, "type": "User",
                "site_admin": False, "avatar_url": "", "gravatar_id": "", "url": u,
                "html_url": f"https://github.example/{login}", "events_url": u + "/events",
                "followers_url": u + "/followers", "following_url": u + "/following",
                "gists_url": u + "/gists", "organizations_url": u + "/orgs",
                "received_events_url": u + "/received_events", "repos_url": u + "/repos",
                "starred_url": u + "/starred", "subscriptions_url": u + "/subscriptions"}

    def repo(self, base: str) -> dict[str, Any]:
        owner, name = self.full_name.split("/")
        u = f"{base}/repos/{self.full_name}"
        urls = {f"{k}_url": f"{u}/{k}" for k in (
            "archive", "assignees", "blobs", "branches", "collaborators", "comments",
            "commits", "compare", "contents", "contributors", "deployments", "downloads",
            "events", "forks", "git_commits", "git_refs", "git_tags", "hooks",
            "issue_comment", "issue_events", "issues", "keys", "labels", "languages",
            "merges", "milestones", "notifications", "pulls", "releases", "stargazers",
            "statuses", "subscribers", "subscription", "tags", "teams", "trees")}
        return {**urls, "id": 1, "name": name, "full_name": self.full_name,
                "owner": self.user(owner, base), "private": False, "fork": False,
                "description": "", "url": u, "html_url": f"https://github.example/{owner}",
                "archived": False, "clone_url": str(self.bare), "created_at": NOW,
                "default_branch": "main", "forks_count": 0, "git_url": "", "has_downloads": True,
                "has_issues": True, "has_pages": False, "has_projects": False,
                "has_wiki": False, "homepage": None, "language": None, "mirror_url": None,
                "network_count": 0, "open_issues_count": 0, "pushed_at": NOW, "size": 1,
                "ssh_url": "", "stargazers_count": 0, "subscribers_count": 0, "svn_url": "",
                "updated_at": NOW, "watchers_count": 0}

    def pull(self, number: int, base: str) -> dict[str, Any]:
        p = self.pulls[number]
        u = f"{base}/repos/{self.full_name}/pulls/{number}"
        owner = self.full_name.split("/")[0]

        def end(ref: str) -> dict[str, Any]:
            sha = _git(self.bare, "rev-parse", f"refs/heads/{ref}")
            return {"label": f"{owner}:{ref}", "ref": ref, "sha": sha,
                    "user": self.user(owner, base), "repo": self.repo(base)}

        links = {k: {"href": u} for k in ("self", "html", "issue", "comments",
                                          "review_comments", "review_comment", "commits",
                                          "statuses")}
        return {"url": u, "id": number, "number": number, "state": p["state"],
                "title": p["title"], "body": p["body"], "body_html": "", "body_text": "",
                "user": self.user(p["user"], base), "head": end(p["head"]),
                "base": end(p["base"]), "_links": links, "html_url":
                f"https://github.example/{self.full_name}/pull/{number}",
                "active_lock_reason": None, "assignee": None, "assignees": [],
                "closed_at": None, "comments_url": u + "/comments", "commits_url": u,
                "created_at": NOW, "diff_url": u, "issue_url": u, "locked": False,
                "merge_commit_sha": p.get("merge_commit_sha"),
                "merged_at": NOW if p["merged"] else None, "patch_url": u,
                "review_comment_url": u, "review_comments_url": u, "statuses_url": u,
                "updated_at": NOW, "additions": 1, "author_association": "MEMBER",
                "comments": 0, "commits": len(self.pull_commits(number)), "deletions": 1,
                "draft": False,
                "mergeable": not p["merged"], "mergeable_state": "clean",
                "merged": p["merged"], "review_comments": 0, "requested_reviewers": [],
                "requested_teams": [],
                "merged_by": self.user(p["merged_by"], base) if p["merged_by"] else None}

    def pull_commits(self, number: int) -> list[str]:
        """The pull request's own commits (what its head has and its base had not), oldest
        first; as they were when it was merged."""
        p = self.pulls[number]
        if p["merged"]:
            return p["commits"]
        return _git(self.bare, "rev-list", "--reverse", f"refs/heads/{p['head']}",
                    f"^refs/heads/{p['base']}").split()

    def associated(self, sha: str) -> list[int]:
        """The pull requests GitHub associates with commit ``sha``."""
        found = []
        for number, p in sorted(self.pulls.items()):
            shas = p["made"] + p["commits"] if p["merged"] else self.pull_commits(number)
            if sha in shas or sha in p["opened"]:  # its head's commits when it was opened
                found.append(number)
        return found

    def org(self, login: str, base: str) -> dict[str, Any]:
        u = f"{base}/orgs/{login}"
        return {"login": login, "id": abs(hash(login)) % 10**6, "url": u, "avatar_url": "",
                "description": "", "events_url": u + "/events", "hooks_url": u + "/hooks",
                "issues_url": u + "/issues", "members_url": u + "/members{/member}",
                "public_members_url": u + "/public_members{/member}",
                "repos_url": u + "/repos", "created_at": NOW, "followers": 0,
                "following": 0, "html_url": f"https://github.example/{login}",
                "public_repos": 1, "type": "Organization"}

    def team(self, org: str, slug: str, base: str) -> dict[str, Any]:
        u = f"{base}/orgs/{org}/teams/{slug}"
        return {"id": abs(hash(slug)) % 10**6, "name": slug, "slug": slug, "url": u,
                "members_url": u + "/members{/member}", "permission": "push",
                "repositories_url": u + "/repos", "created_at": NOW, "updated_at": NOW,
                "members_count": len(self.teams[f"{org}/{slug}"]), "repos_count": 1,
                "organization": self.org(org, base)}

    # -- the API -----------------------------------------------------------------------------

    def route(self, method: str, path: str, body: dict, user: str | None,
              base: str, query: dict[str, str] | None = None) -> tuple[int, Any]:
        prefix = f"/repos/{self.full_name}"
        if user is None:
            return 401, {"message": "Bad credentials"}
        if method == "GET" and path == prefix:
            return 200, self.repo(base)
        m = re.fullmatch(r"/orgs/([^/]+)(?:/teams/([^/]+)(/members)?)?", path)
        if method == "GET" and m:
            org, slug, members = m.groups()
            if slug is None:
                known = any(t.startswith(f"{org}/") for t in self.teams)
                return (200, self.org(org, base)) if known else (404, {"message": "Not Found"})
            if f"{org}/{slug}" not in self.teams:
                return 404, {"message": "Not Found"}
            if members:
                return 200, [self.user(login, base) for login in self.teams[f"{org}/{slug}"]]
            return 200, self.team(org, slug, base)
        m = re.fullmatch(rf"{re.escape(prefix)}/commits/([^/]+)/pulls", path)
        if method == "GET" and m:
            try:
                sha = _git(self.bare, "rev-parse", "--verify", "-q", f"{m.group(1)}^{{commit}}")
            except subprocess.CalledProcessError:
                return 422, {"message": f"No commit found for SHA: {m.group(1)}"}
            return 200, [self.pull(n, base) for n in self.associated(sha)]
        if method == "GET" and path == f"{prefix}/pulls":
            state = (query or {}).get("state", "open")
            numbers = [n for n, p in self.pulls.items() if state in ("all", p["state"])]
            reverse = (query or {}).get("direction", "desc") == "desc"
            return 200, [self.pull(n, base) for n in sorted(numbers, reverse=reverse)]
        if method == "POST" and path == f"{prefix}/pulls":
            number = len(self.pulls) + 1
            self.pulls[number] = {"title": body["title"], "body": body.get("body", ""),
                                  "head": body["head"], "base": body["base"],
                                  "user": user, "state": "open", "merged": False,
                                  "merged_by": None, "commits": [], "made": []}
            self.pulls[number]["opened"] = self.pull_commits(number)
            self.reviews[number] = []
            return 201, self.pull(number, base)
        m = re.fullmatch(rf"{re.escape(prefix)}/pulls/(\d+)(/reviews|/merge)?", path)
        if not m or int(m.group(1)) not in self.pulls:
            return 404, {"message": "Not Found"}
        number, tail = int(m.group(1)), m.group(2)
        if method == "GET" and tail is None:
            return 200, self.pull(number, base)
        if method == "GET" and tail == "/reviews":
            return 200, self.reviews[number]
        if method == "POST" and tail == "/reviews":
            state = {"APPROVE": "APPROVED", "REQUEST_CHANGES": "CHANGES_REQUESTED"}.get(
                body.get("event", ""), "COMMENTED")
            review = {"id": len(self.reviews[number]) + 1, "user": self.user(user, base),
                      "body": body.get("body", ""), "body_html": "", "body_text": "",
                      "state": state, "html_url": "", "author_association": "MEMBER",
                      "pull_request_url": f"{base}{prefix}/pulls/{number}",
                      "commit_id": None, "submitted_at": NOW}
            self.reviews[number].append(review)
            return 200, review
        if method == "PUT" and tail == "/merge":
            return self.merge(number, user, body)
        return 404, {"message": "Not Found"}

    def merge(self, number: int, user: str, body: dict | None = None) -> tuple[int, Any]:
        """Merge pull request ``number`` the way ``body`` asks (``merge_method``,
        ``commit_title``, ``commit_message``), as ``user``."""
        body = body or {}
        p = self.pulls[number]
        method = body.get("merge_method", "merge")
        if method not in MERGE_METHODS:
            return 422, {"message": f"Invalid merge_method: {method}"}
        if p["merged"] or p["state"] != "open":
            return 405, {"message": "Pull Request is not mergeable"}
        owner = self.full_name.split("/")[0]
        commits = self.pull_commits(number)
        if not commits:
            return 422, {"message": "No commits between base and head"}
        with tempfile.TemporaryDirectory() as work:
            tree = Path(work) / "tree"
            subprocess.run(["git", "clone", "-q", "-b", p["base"], str(self.bare), str(tree)],
                           check=True)
            _git(tree, "fetch", "-q", "origin", f"refs/heads/{p['head']}:pr")
            before = _git(tree, "rev-parse", "HEAD")
            try:
                if method == "merge":
                    title = body.get("commit_title") or \
                        f"Merge pull request #{number} from {owner}/{p['head']}"
                    _git(tree, "merge", "--no-ff", "-q", "pr", "-m", title, "-m",
                         body.get("commit_message") or p["title"])
                elif method == "squash":
                    _git(tree, "merge", "--squash", "-q", "pr")
                    listed = "\n".join(f"* {_git(tree, 'log', '-1', '--format=%s', c)}"
                                       for c in commits)
                    _git(tree, "commit", "-q", "-m",
                         body.get("commit_title") or f"{p['title']} (#{number})",
                         "-m", body.get("commit_message") or listed)
                else:  # rebase: each commit replayed, author and message kept
                    _git(tree, "cherry-pick", "--allow-empty", *commits)
            except subprocess.CalledProcessError:
                return 405, {"message": "Merge conflict"}
            _git(tree, "push", "-q", "origin", f"HEAD:refs/heads/{p['base']}")
            sha = _git(tree, "rev-parse", "HEAD")
            made = _git(tree, "rev-list", "--first-parent", "HEAD", f"^{before}").split()
        p.update(merged=True, merged_by=user, state="closed", merge_commit_sha=sha,
                 commits=commits, made=made)
        return 200, {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}
