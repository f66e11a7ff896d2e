"""Child processes that cannot outlive the devcluster.

Every process the devcluster starts (etcd, the control plane, the engines the node agent runs)
goes through :class:`ManagedProcess`: it runs in its own session (process group), so stopping it
also stops anything it forked; on Linux it gets ``PR_SET_PDEATHSIG`` so that the kernel kills it
if the Python process dies without cleaning up (``kill -9``, a crashed test runner); and every
live one is registered for an ``atexit`` sweep. (The death signal is tied to the thread that
started the child, so it is only asked for from the main thread or a thread that outlives the
child.)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = ["ManagedProcess", "exit_with_parent", "free_port", "stop_all"]

_PR_SET_PDEATHSIG = 1
_live: set[ManagedProcess] = set()
_live_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def exit_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn`` for a child the kernel kills when its parent thread ends (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ManagedProcess:
    """One child process in its own process group, with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        die_with_parent: bool | None = None,
    ) -> None:
        """Start ``argv`` now.

        ``die_with_parent``: ask the kernel to SIGKILL the child when the thread that started it
        ends (``PR_SET_PDEATHSIG`` is tied to the creating *thread*, not the process). Default:
        only when called from the main thread, whose end is the process's end; pass True from a
        thread that lives as long as the child should.
        """
        if die_with_parent is None:
            die_with_parent = threading.current_thread() is threading.main_thread()
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = log_path.open("ab")
        full_env = dict(os.environ)
        if env is not None:
            full_env.update(env)
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=exit_with_parent if die_with_parent else None,
            )
        except BaseException:
            self._log.close()
            raise
        with _live_lock:
            _live.add(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def _signal_group(self, sig: int) -> None:
        # The child leads its own session, so its pgid is its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def terminate(self) -> None:
        """Send SIGTERM to the process group (no wait)."""
        self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL to the process group (no wait)."""
        self._signal_group(signal.SIGKILL)

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the group, SIGKILL it after ``grace_s``; reap; return the exit status."""
        if self.alive():
            self.terminate()
            try:
                self.popen.wait(timeout=max(grace_s, 0.0))
            except subprocess.TimeoutExpired:
                self.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=10.0)
        # Whatever the leader left behind in its group goes too.
        self.kill()
        self.close()
        return self.popen.returncode

    def close(self) -> None:
        """Forget the process (after it exited) and close its log."""
        with _live_lock:
            _live.discard(self)
        if not self._log.closed:
            self._log.close()

    def log_tail(self, max_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, returncode={self.returncode})"


def stop_all(grace_s: float = 2.0) -> None:
    """Stop every process still registered (the atexit sweep; safe to call any time)."""
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        remaining = deadline - time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=max(remaining, 0.01))
    for proc in procs:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=5.0)
        proc.close()


atexit.register(stop_all)
