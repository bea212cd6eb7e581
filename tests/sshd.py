"""A real OpenSSH server on 127.0.0.1 for tests: a throwaway host key and client key, an
ssh_config naming it, and a way to stop it (connections included) mid-run."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def available() -> bool:
    return Path(SSHD).is_file() and shutil.which("ssh") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSshd:
    """``with LocalSshd(folder) as sshd:`` — ``sshd.alias`` is a host in ``sshd.config``."""

    def __init__(self, folder: Path, alias: str = "modelsmith-test") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.alias = alias
        self.port = _free_port()
        self.config = self.folder / "ssh_config"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> LocalSshd:
        keys = {name: self.folder / name for name in ("host_key", "client_key")}
        for path in keys.values():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                           check=True)
        (self.folder / "authorized_keys").write_text(
            (self.folder / "client_key.pub").read_text())
        os.chmod(self.folder / "authorized_keys", 0o600)
        server_config = self.folder / "sshd_config"
        server_config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1",
            f"HostKey {keys['host_key']}",
            f"AuthorizedKeysFile {self.folder / 'authorized_keys'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "PermitRootLogin prohibit-password",
            "StrictModes no", "UsePAM no", f"PidFile {self.folder / 'sshd.pid'}",
            "LogLevel ERROR", "",
        ]))
        self.config.write_text("\n".join([
            f"Host {self.alias}", "  HostName 127.0.0.1", f"  Port {self.port}",
            f"  User {getpass.getuser()}", f"  IdentityFile {keys['client_key']}",
            "  IdentitiesOnly yes", "  UserKnownHostsFile /dev/null",
            "  StrictHostKeyChecking no", "  LogLevel ERROR", "",
        ]))
        with contextlib.suppress(OSError):  # privilege separation; the package makes it
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(server_config)],
                                        start_new_session=True, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("sshd did not start") from None
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Kill the server and every connection it serves (a host that went down)."""
        if self.process is None:
            return
        # Connection handlers are children of the listener: kill them by parent first.
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                                  text=True, check=False).stdout.split()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def __exit__(self, *exc: object) -> None:
        self.stop()
