"""`make demo`'s script serving an already trained bundle (training is `make train`'s test)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from serving.process import ROOT, free_port


@pytest.mark.slow
def test_demo_serves_and_prints_the_examples(bundle_dir: Path, shop) -> None:
    _, truth = shop
    done = subprocess.run([sys.executable, "-m", "serving.demo", "--model", str(bundle_dir),
                           "--port", str(free_port()), "--once"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for title in ("1. A returning shopper", "2. A first-time visitor", "3. The same visitor's",
                  "4. People who bought", "5. Items like", "6. ", "7. A merchandiser's boost",
                  "8. Complete the cart", "9. A cart of two", "10. demo-visitor before",
                  "11. A model swap", "12. Forget", "13. The segments", "14. A new item",
                  "15. Bad input"):
        assert title in out, title
    assert "strategy history:full_scoring" in out and "strategy popular" in out
    assert "strategy session:full_scoring" in out and "HTTP 400" in out
    assert "strategy embedding:index:same=category_id" in out
    assert "- returning" in out and " learned " in out
    assert "16. A campaign file" in out and '"cart abandoner",1,' in out
    ink = next(line for line in out.splitlines() if "planted complement" in line)
    assert ink.split()[0] == "1." and truth.printer_ink in ink
    # cart completion: the ink first, with its reason; the pin at slot 2; reasons on the items
    cart = out[out.index("8. Complete the cart"):out.index("9. A cart of two")]
    first = next(line for line in cart.splitlines() if line.strip().startswith("1."))
    assert truth.printer_ink in first and "bought together" in first
    boost = out[out.index("7. A merchandiser's boost"):out.index("8. Complete the cart")]
    second = next(line for line in boost.splitlines() if line.strip().startswith("2."))
    assert "the promotion" in second and "pinned" in second
    assert "similar to" in out
    # live events: the visitor's answer follows the two posted events; the swap shows on
    # /model; the forgotten shopper gets the popular items
    live = out[out.index("10. demo-visitor before"):out.index("11. A model swap")]
    assert '"stored": 2' in live and "strategy events:" in live and "strategy popular" in live
    swap = out[out.index("11. A model swap"):out.index("12. Forget")]
    assert '"generation": 1' in swap and "/model:" in swap
    forget = out[out.index("12. Forget"):out.index("13. The segments")]
    assert '"events_deleted"' in forget and "strategy popular" in forget
    # the new item: placed, found by /similar_items, recommended to a visitor who looked at it
    added = out[out.index("14. A new item"):out.index("15. Bad input")]
    assert '"placed": ["printer-x2-new"]' in added
    assert "strategy embedding:index" in added and "<- the new item" in added
    assert "curl -s -X POST http://127.0.0.1:" in out and "demo ready" in out


def test_demo_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "serving.demo", "--model", str(tmp_path),
                               "--port", str(port), "--once"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == \
        f"error: port {port} is in use; choose another with PORT=..."


@pytest.mark.slow
def test_sigterm_stops_the_demo_and_every_server_process(bundle_dir: Path) -> None:
    """A supervisor's SIGTERM (not Ctrl-C's SIGINT to the whole group) reaches the demo alone;
    its server runs in a session of its own, so the demo must stop it."""
    port = free_port()
    demo = subprocess.Popen([sys.executable, "-m", "serving.demo", "--model", str(bundle_dir),
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and demo.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert demo.poll() is None, demo.stderr.read()[-2000:]
        started = demo_processes(demo.pid)
        assert len(started) >= 2   # the server and at least one worker
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=90) == 130   # the Ctrl-C path: run_cli's exit code
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
        with socket.socket() as sock:   # the port is free again
            sock.bind(("127.0.0.1", port))
    finally:
        for process in demo_processes(demo.pid):   # only if the test failed
            with contextlib.suppress(psutil.Error):
                process.kill()
        if demo.poll() is None:
            demo.kill()
        demo.wait(timeout=30)


def demo_processes(pid: int) -> list[psutil.Process]:
    """The bentoml server the demo started and its workers (not its other children, such as
    the campaign export)."""
    with contextlib.suppress(psutil.Error):
        return [p for p in psutil.Process(pid).children(recursive=True)
                if "bentoml" in " ".join(p.cmdline())]
    return []
