"""Start the ToolActor / ToolMaker as real processes for a pipeline run (and tests, benches).

The pipeline talks to them only over HTTP, exactly as it would to services run by someone
else; this module only owns their lifetime: a free port from the OS, readiness polled on
``/health`` (model loaded), the process ended by its handle, its log kept in a file.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """``toolsim serve SERVICE`` on a free port, with ``env`` added to this environment."""

    def __init__(
        self,
        service: str,
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        ready_timeout_s: float = 180.0,
    ) -> None:
        if service not in ("toolactor", "toolmaker"):
            raise ValueError(f"unknown service {service!r}")
        self.service = service
        self.port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        command = [sys.executable, "-m", "toolsim", "serve", self.service, "--port", str(self.port)]
        # without a log path the output goes to a temporary file, read back if start-up fails
        self._log = open(self.log_path, "ab") if self.log_path else tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._wait_ready()
        return self

    def log_tail(self, size: int = 2000) -> str:
        """The last ``size`` bytes the process wrote (its start-up error, when it failed)."""
        if self._log is None:
            return ""
        self._log.flush()
        path = self.log_path
        if path is not None:
            return path.read_bytes()[-size:].decode(errors="replace")
        self._log.seek(0)
        return self._log.read()[-size:].decode(errors="replace")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                code = self.proc.returncode
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(
                    f"{self.service} exited with {code} before it was ready"
                    + (f" (log: {self.log_path})" if self.log_path else "")
                    + f":\n{tail}"
                )
            try:
                if httpx.get(f"{self.url}/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.service} not ready after {self.ready_timeout_s:.0f}s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
