"""A real ``make serve`` process (``bentoml serve serving.service:Tailor``) on a loopback port:
started, waited for until ready, and stopped with every worker it started (also on errors,
Ctrl-C and SIGTERM). ``make demo`` and the serving benchmark run the service through it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from features.infra import ROOT, TailorError

SERVICE = "serving.service:Tailor"
READY_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def processes(self) -> list[int]:
        """Pids of every process the server started (circus puts each worker in a session of
        its own, so the server's process group does not hold them)."""
        import psutil

        with contextlib.suppress(psutil.Error):
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        return []

    def workers(self) -> list[int]:
        """Pids of BentoML's API workers (``_bentoml_impl.worker``); the server itself when it
        runs the API in-process."""
        import psutil

        found = []
        for pid in self.processes():
            with contextlib.suppress(psutil.Error):
                if "_bentoml_impl.worker" in " ".join(psutil.Process(pid).cmdline()):
                    found.append(pid)
        return found or [self.proc.pid]

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server and every process it started, so far."""
        import psutil

        total = 0.0
        for pid in [self.proc.pid, *self.processes()]:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                total += times.user + times.system
        return total


def serve_command(model: str | Path | None, host: str, port: int, *flags: str,
                  service: str = SERVICE) -> tuple[list[str], dict[str, str]]:
    """``make serve``'s command line and environment: ``bentoml serve`` (this environment's) of
    ``service`` for ``model`` on ``host``:``port``, plus extra ``bentoml serve`` ``flags``. The
    service reads the model and the address it answers for from the environment
    (serving/service.py, serving/guard.py); ``model`` None: a Bento's own model."""
    bentoml = Path(sys.executable).parent / "bentoml"
    env = {**os.environ, **({} if model is None else {"TAILOR_MODEL": str(model)}),
           "TAILOR_SERVE_HOST": host}
    return [str(bentoml), "serve", service, "--host", host, "--port", str(port), *flags], env


@contextlib.contextmanager
def served(model: str | Path | None, port: int, log: Path, *, port_hint: str = "--port",
           service: str = SERVICE) -> Iterator[Server]:
    """``make serve``'s command for ``model`` (a bundle folder or a registry reference) on
    ``port``, ready; stopped afterwards with all its workers. ``port_hint``: how the caller's
    user picks another port (the busy-port error names it). ``service``: what ``bentoml serve``
    serves, ``tailor:latest`` for the newest Bento (``model`` None: the one it was built with)."""
    if not port_is_free(port):
        raise TailorError(f"port {port} is in use; choose another with {port_hint}")
    cmd, env = serve_command(model, "127.0.0.1", port, service=service)
    with started(cmd, env, port, log, ready="/readyz", what="the server") as server:
        yield server


@contextlib.contextmanager
def started(cmd: list[str], env: dict[str, str], port: int, log: Path, *, ready: str,
            what: str, timeout_s: float = READY_TIMEOUT_S) -> Iterator[Server]:
    """``cmd`` (a server on loopback ``port``, output to ``log``) once ``ready`` answers 200;
    stopped afterwards with every process it started. ``what`` names it in errors."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as client:
            while True:
                if proc.poll() is not None:
                    raise TailorError(f"{what} exited while starting (exit {proc.returncode})"
                                      f":\n{tail(log)}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(ready).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TailorError(f"{what} was not ready after {timeout_s:.0f} s:"
                                      f"\n{tail(log)}")
                time.sleep(0.5)
        yield server
    finally:
        stop(server)


def stop(server: Server) -> None:
    """SIGTERM the server (BentoML's arbiter stops its workers and exits); whatever is still
    running after that (the arbiter, a worker, their process groups) is SIGKILLed."""
    import psutil

    proc = server.proc
    started = []   # taken before the arbiter goes: afterwards its workers are orphans
    for pid in server.processes():
        with contextlib.suppress(psutil.Error):
            started.append(psutil.Process(pid))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)   # start_new_session: the server leads its group
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT_S)
    _, alive = psutil.wait_procs(started, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While the block runs, SIGTERM raises KeyboardInterrupt, so ``served`` stops its server as
    on Ctrl-C: by default SIGTERM ends a process at once, without its ``finally`` blocks, and the
    server (a session of its own) would keep running. A second SIGTERM is ignored, so it cannot
    cut the stop short. Main thread only: elsewhere nothing is installed."""
    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:   # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def tail(log: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""
