"""MLflow's run-compare page, as a reviewer opens it: two finished training runs, `make mlflow-ui`
over their store, the compare page in headless Chromium (Debian's, driven by Playwright; no
browser is downloaded), the headline metric read off the page, and a screenshot.

`make mlflow-screenshot` trains two tiny runs in a temporary store and writes
``docs/mlflow-compare.png``, the picture the README shows; the slow test
``tests/benchmarks/test_mlflow_compare.py`` runs the same steps and checks what the page shows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from features.infra import ROOT, TailorError, add_traceback_arg, run_cli
from serving.process import free_port, started
from training.run_summary import MAIN_METRIC
from training.tracking import metric_key

HEADLINE = metric_key("test", "lift_vs_best_baseline", MAIN_METRIC)   # as training logs it
PARAMS_SELECT, METRICS_SELECT = "dubois-select-1", "dubois-select-2"  # the plot's two pickers
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
READY_TIMEOUT_S = 120.0
# Two small runs that differ: the embedded shop, pooling towers, dim 16 and 32.
TINY_RUN = ["--data", "synthetic", "--encoder", "pooling", "--n-layers", "1", "--epochs", "2",
            "--batch-tokens", "8192", "--valid-users", "300", "--stack-users", "500",
            "--no-progress"]
RUNS = {"compare-dim16": ["--dim", "16"], "compare-dim32": ["--dim", "32"]}

# The metrics table is virtualized (react-virtualized): only the rows in its 300-pixel window
# exist in the page. One grid holds the names, another the values, scrolled together.
_ROW = """(name) => {
  const cells = [...document.querySelectorAll(
    '.ReactVirtualized__Grid__innerScrollContainer > div')];
  const cell = cells.find(c => c.textContent.trim() === name);
  if (!cell) return null;
  const section = cell.closest('.du-bois-light-collapse-content-box');
  return cells.filter(c => c !== cell && section.contains(c) && c.style.top === cell.style.top
                         && c.parentElement !== cell.parentElement)
              .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left))
              .map(c => c.textContent.trim());
}"""
_GRID_BOX = """() => {
  const link = document.querySelector('a[title="Plot chart"]');
  const grids = [...link.closest('.du-bois-light-collapse-content-box')
                        .querySelectorAll('.ReactVirtualized__Grid')];
  const g = grids[grids.length - 1];
  const r = g.getBoundingClientRect();
  return {x: r.x + r.width / 2, y: r.y + r.height / 2, top: g.scrollTop,
          end: g.scrollTop + g.clientHeight >= g.scrollHeight - 1};
}"""


def chromium() -> str | None:
    """Debian's Chromium (`make install-browser`), or None."""
    return next((path for path in CHROMIUM if Path(path).exists()), None)


def train_runs(store: Path) -> list[str]:
    """Two finished training runs in the store at ``store``; their run ids, in order."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{store}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TAILOR_CACHE": str(store / "cache")}
    env.pop("RANK", None)
    for name, args in RUNS.items():
        done = subprocess.run([sys.executable, "-m", "training.train", *TINY_RUN,
                               *args, "--run-name", name], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise TailorError(f"training run {name} failed:\n{done.stderr[-2000:]}")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tailor-synthetic-small")
    by_name = {r.info.run_name: r.info.run_id
               for r in client.search_runs([experiment.experiment_id])}
    return [by_name[name] for name in RUNS]


@contextlib.contextmanager
def mlflow_ui(store: Path, log: Path) -> Iterator[str]:
    """`make mlflow-ui` over the store at ``store`` on a free port; yields its URL."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db"}
    with started(["make", "-s", "mlflow-ui", f"PORT={port}"], env, port, log, ready="/health",
                 what="make mlflow-ui", timeout_s=READY_TIMEOUT_S) as server:
        yield server.url


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    return (f"{base}/#/compare-runs?runs={json.dumps(run_ids)}"
            f"&experiments={json.dumps([experiment_id])}")


def read_compare_page(url: str, metric: str, screenshot: Path) -> list[str]:
    """The values the compare page at ``url`` shows for ``metric``, one per run in the URL's
    order. Before reading, the page's plot is set to the towers' size against ``metric`` and
    saved to ``screenshot``."""
    from playwright.sync_api import sync_playwright

    browser_path = chromium()
    if browser_path is None:
        raise TailorError("Chromium is not installed: run `make install-browser`")
    with sync_playwright() as pw:
        # --no-sandbox: Chromium's sandbox refuses to start as root, which CI runs as.
        browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1150})
            page.goto(url)
            page.wait_for_selector('a[title="Plot chart"]', timeout=90_000)
            for close in page.get_by_role("button", name="Close").all():  # the assistant panel
                with contextlib.suppress(Exception):
                    close.click(timeout=2000)
            # The parallel-coordinates plot: the towers' size against the headline metric.
            page.get_by_role("button", name="Clear All").click()
            for select, text in ((PARAMS_SELECT, "model.dim"), (METRICS_SELECT, metric)):
                box = page.locator(f"#{select}")
                box.click()
                box.fill(text)
                page.keyboard.press("Enter")
            page.keyboard.press("Escape")
            page.get_by_text("Comparing", exact=False).first.scroll_into_view_if_needed()
            page.wait_for_timeout(1500)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
            page.get_by_text("Metrics", exact=True).scroll_into_view_if_needed()
            values = page.evaluate(_ROW, metric)
            # Scrolled with the mouse wheel, as a person does: the page keeps the names and the
            # values grids in step only for real scroll events.
            while not values:
                box = page.evaluate(_GRID_BOX)
                if box["end"]:
                    raise TailorError(f"the compare page shows no row {metric!r}")
                page.mouse.move(box["x"], box["y"])
                page.mouse.wheel(0, 90)
                page.wait_for_timeout(150)
                values = page.evaluate(_ROW, metric)
            return values
        finally:
            browser.close()


def capture(out: Path, work: Path) -> dict:
    """Train two runs under ``work``, open their compare page, save ``out``; what it showed."""
    from mlflow.tracking import MlflowClient

    work.mkdir(parents=True, exist_ok=True)
    run_ids = train_runs(work)
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    experiment = client.get_experiment_by_name("tailor-synthetic-small").experiment_id
    with mlflow_ui(work, work / "mlflow-ui.log") as base:
        shown = read_compare_page(compare_url(base, experiment, run_ids), HEADLINE, out)
    logged = [client.get_run(run_id).data.metrics[HEADLINE] for run_id in run_ids]
    return {"run_ids": run_ids, "shown": shown, "logged": logged}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.mlflow_compare",
        description="Train two tiny runs in a temporary MLflow store, open their run-compare "
                    "page from `make mlflow-ui` in headless Chromium, print the headline metric "
                    f"({HEADLINE}) as the page shows it, and save a screenshot.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "mlflow-compare.png",
                        help="where the screenshot goes (default: %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary store (its path is printed)")
    add_traceback_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tailor-mlflow-compare-"))
    try:
        found = capture(args.out, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for run_id, shown, logged in zip(found["run_ids"], found["shown"], found["logged"],
                                     strict=True):
        print(f"run {run_id}: {HEADLINE} shown {shown}, logged {logged:.6g}")
    print(f"screenshot {args.out}" + (f"; store {work}" if args.keep else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
