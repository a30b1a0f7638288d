"""Run agent-written Python in a bubblewrap sandbox, one throwaway process per call.

Why bubblewrap: it is the sandbox Flatpak is built on, packaged by Debian (``bubblewrap``),
and does in one exec what hand-rolled ``unshare`` + rlimits would need a helper for: fresh
user, PID, network, IPC and UTS namespaces, and a file system of our choosing. Inside, the code
runs as ``nobody`` with no capabilities, so it cannot remount anything or raise its limits back.

What it sees: the system's program and library folders (``/usr`` and the ``/bin``, ``/lib``...
links or folders), the loader cache, and the interpreter's own prefix, all read-only, on an
empty read-only root; nothing else of the host (no ``/etc``, ``/run/secrets``, ``/var``,
service-account tokens, home folders or the project). ``/tmp`` and the work directory are
small private tmpfs mounts, so everything a program writes is bounded in total and gone when
it ends; the host work directory only lends ``main.py``, read-only.

Limits per run: wall time (the whole process group is killed), CPU seconds, address space
(``RLIMIT_AS``), file size, process count, and captured output, stdout and stderr together
(bytes beyond the cap are dropped and ``truncated`` is set). Runs at once are capped too;
more wait their turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolsim.tools.base import LiveTool, ToolConfigurationError, function_definition, object_schema

MiB = 1 << 20
MAX_STDIN_BYTES = 1 * MiB
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Bound read-only (or recreated as the links they are): programs and shared libraries."""
SYSTEM_FILES = ("/etc/ld.so.cache",)
"""Bound read-only where present: the loader finds libraries without it, only slower."""

INSTALL_HINT = (
    "install bubblewrap: `apt-get install -y bubblewrap` (or run scripts/system-deps.sh); "
    "it also needs user namespaces (on Ubuntu 24.04: "
    "`sysctl kernel.apparmor_restrict_unprivileged_userns=0`)"
)

# Runs first inside the sandbox: set the limits (no capabilities, so they cannot be raised
# again), then exec a clean interpreter so tracebacks show only the agent's code.
_BOOTSTRAP = """\
import os, resource, sys
for name, value in ((resource.RLIMIT_AS, {memory}), (resource.RLIMIT_CPU, {cpu}),
                    (resource.RLIMIT_FSIZE, {fsize}), (resource.RLIMIT_NPROC, {nproc}),
                    (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(name, (value, value))
os.execv(sys.executable, [sys.executable, "-I", "-B", "main.py"])
"""


def python_interface(
    timeout_s: float = 5.0, memory_bytes: int = 256 * MiB
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The definition and output schema (no instance needed: the ToolMaker merges them)."""
    definition = function_definition(
        "python",
        f"Run a Python 3 program and return its output. No network; {timeout_s:g} s wall "
        f"time; {memory_bytes // MiB} MiB memory; only the current directory is writable.",
        {
            "code": {"type": "string", "description": "The program (print what you need)."},
            "stdin": {"type": ["string", "null"], "description": "Standard input, if any."},
        },
    )
    output_schema = object_schema(
        {
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
            "exit_code": {"type": "integer", "description": "128+N when killed by signal N."},
            "timed_out": {"type": "boolean"},
            "truncated": {"type": "boolean", "description": "Output exceeded the cap."},
        }
    )
    return definition, output_schema


class PythonSandbox(LiveTool):
    """``{"code", "stdin"}`` → ``{"stdout", "stderr", "exit_code", "timed_out", "truncated"}``."""

    name = "python"

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        memory_bytes: int = 256 * MiB,
        output_bytes: int = 64 * 1024,
        file_bytes: int = 16 * MiB,
        max_processes: int = 64,
        max_concurrent: int = 4,
        python: str | None = None,
        workdir_root: Path | None = None,
    ) -> None:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise ToolConfigurationError(
                f"the python tool needs the `bwrap` binary: {INSTALL_HINT}"
            )
        self.timeout_s = timeout_s
        self.output_bytes = output_bytes
        self.workdir_root = workdir_root
        self._bwrap = bwrap
        # The real interpreter, not a venv's symlink: a venv may sit under /tmp, which the
        # sandbox replaces with a private tmpfs (user code runs with -I: no site-packages).
        self._python = os.path.realpath(python or sys.executable)
        self._file_bytes = file_bytes
        self.max_concurrent = max_concurrent
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._bootstrap = _BOOTSTRAP.format(
            memory=memory_bytes,
            cpu=max(1, math.ceil(timeout_s)),
            fsize=file_bytes,
            nproc=max_processes,
        )
        self.definition, self.output_schema = python_interface(timeout_s, memory_bytes)
        self._check_sandbox()

    @property
    def python(self) -> str:
        """The interpreter the sandbox runs (its prefix is bound read-only inside)."""
        return self._python

    async def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        async with self._slot():
            workdir = Path(tempfile.mkdtemp(prefix="toolsim-py-", dir=self.workdir_root))
            try:
                (workdir / "main.py").write_text(str(arguments["code"]), encoding="utf-8")
                stdin = (arguments.get("stdin") or "").encode("utf-8")[:MAX_STDIN_BYTES]
                return await self._run(workdir, stdin)
            finally:
                _remove_tree(workdir)

    def _slot(self) -> asyncio.Semaphore:
        # One semaphore per event loop: an asyncio primitive belongs to the loop it waits on.
        loop = asyncio.get_running_loop()
        slot = self._slots.get(loop)
        if slot is None:
            slot = self._slots[loop] = asyncio.Semaphore(self.max_concurrent)
        return slot

    def command(self, workdir: Path) -> list[str]:
        """The full ``bwrap`` command line for one run in ``workdir``."""
        args = [
            self._bwrap,
            "--unshare-all",
            "--unshare-user",
            "--uid", "65534",
            "--gid", "65534",
            "--cap-drop", "ALL",
            "--die-with-parent",
            "--new-session",
        ]  # fmt: skip
        size = ["--size", str(self._file_bytes)]
        args += _system_binds()
        args += [*size, "--tmpfs", "/tmp"]
        for prefix in self._interpreter_dirs():  # after /tmp: a prefix may live under it
            args += ["--ro-bind", prefix, prefix]
        args += [*size, "--tmpfs", str(workdir)]
        args += ["--ro-bind", str(workdir / "main.py"), str(workdir / "main.py")]
        args += [
            "--dev", "/dev",
            "--proc", "/proc",
            "--remount-ro", "/",  # the empty root and the folders made for mount points
            "--chdir", str(workdir),
            "--clearenv",
            "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
            "--setenv", "HOME", str(workdir),
            "--setenv", "TMPDIR", "/tmp",
            "--setenv", "LANG", "C.UTF-8",
            "--setenv", "OPENBLAS_NUM_THREADS", "1",
            "--setenv", "OMP_NUM_THREADS", "1",
            "--setenv", "MPLBACKEND", "Agg",
            "--",
            self._python, "-I", "-c", self._bootstrap,
        ]  # fmt: skip
        return args

    async def _run(self, workdir: Path, stdin: bytes) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            *self.command(workdir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as one on timeout
        )
        assert proc.stdin and proc.stdout and proc.stderr
        feeder = asyncio.create_task(_feed(proc.stdin, stdin))
        budget = _Budget(self.output_bytes)  # stdout and stderr share one cap
        out = asyncio.create_task(_read_capped(proc.stdout, budget))
        err = asyncio.create_task(_read_capped(proc.stderr, budget))
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), self.timeout_s)
        except TimeoutError:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled: never leave the sandbox running
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        # The PID namespace dies with its init, so the pipes close right after.
        (stdout, cut_out), (stderr, cut_err) = await asyncio.gather(out, err)
        feeder.cancel()
        code = proc.returncode
        exit_code = 128 - code if code is not None and code < 0 else int(code or 0)
        # bwrap reports a child killed by SIGXCPU (CPU limit) as 128+24: a timeout too.
        timed_out = timed_out or exit_code == 128 + signal.SIGXCPU
        if timed_out:
            stderr += f"\nTimeoutError: killed after {self.timeout_s:g} s\n".encode()
        return {
            "stdout": stdout.decode("utf-8", errors="replace"),
            "stderr": stderr.decode("utf-8", errors="replace"),
            "exit_code": exit_code,
            "timed_out": timed_out,
            "truncated": cut_out or cut_err,
        }

    def _interpreter_dirs(self) -> list[str]:
        """The interpreter's prefixes outside the system folders (pyenv in /root, /opt/...)."""
        dirs = {os.path.realpath(sys.base_prefix), str(Path(self._python).parent.parent)}
        system = [Path(os.path.realpath(d)) for d in SYSTEM_DIRS if os.path.isdir(d)]
        return sorted(d for d in dirs if not any(Path(d).is_relative_to(s) for s in system))

    def _check_sandbox(self) -> None:
        """One empty run at start-up, so a host without user namespaces fails loudly now."""
        with tempfile.TemporaryDirectory(prefix="toolsim-py-check-") as tmp:
            (Path(tmp) / "main.py").write_text("print('ok')\n")
            try:
                done = subprocess.run(
                    self.command(Path(tmp)), capture_output=True, timeout=30, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ToolConfigurationError(f"bwrap did not run: {exc}; {INSTALL_HINT}") from exc
        if done.returncode != 0 or done.stdout.strip() != b"ok":
            message = done.stderr.decode(errors="replace").strip()[-500:]
            raise ToolConfigurationError(
                f"the bwrap sandbox does not work here: {message}; {INSTALL_HINT}"
            )


async def _feed(pipe: asyncio.StreamWriter, data: bytes) -> None:
    # The program may exit without reading its input; that is not an error.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data:
            pipe.write(data)
            await pipe.drain()
        pipe.close()


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):  # merged /usr: /bin -> usr/bin, recreated as the same link
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in SYSTEM_FILES:
        args += ["--ro-bind-try", path, path]
    return args


class _Budget:
    """Bytes of output one run may still keep, shared by its stdout and stderr readers."""

    def __init__(self, limit: int) -> None:
        self.room = limit


async def _read_capped(stream: asyncio.StreamReader, budget: _Budget) -> tuple[bytes, bool]:
    """Keep what the budget allows, drain (and drop) the rest so the writer never blocks."""
    kept = bytearray()
    truncated = False
    while chunk := await stream.read(64 * 1024):
        taken = chunk[: max(budget.room, 0)]
        kept += taken
        budget.room -= len(taken)
        if len(taken) < len(chunk):
            truncated = True
    return bytes(kept), truncated


def _remove_tree(path: Path) -> None:
    def make_writable(func: Callable[..., Any], target: str, _exc: Any) -> None:
        # The program may have left read-only directories; a non-root owner must chmod first.
        os.chmod(os.path.dirname(target), stat.S_IRWXU)
        func(target)

    shutil.rmtree(path, onerror=make_writable)
