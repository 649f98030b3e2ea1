"""`make demo`: train a small model on the embedded shop, serve it, show a few requests.

Steps: train (``training.train`` on ``synthetic`` with settings that take a minute or two on two
cores; logged to MLflow and registered like any run), start ``bentoml serve`` on the version
just registered, send example requests — a returning shopper, a first-time visitor, a visitor's
session, "also bought" for the shop's printer, merchandising (diversity, a boost, a pin, cart
completion; every item says ``because``), live events (two posted events change the next
answer), a model swap without a restart and a forgotten shopper — print each request (as curl)
and its answer, then keep serving until Ctrl-C (or SIGTERM: the server and its workers stop
either way). ``--model REF`` skips training and serves REF instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from features.event_store import URL_ENV
from features.infra import ROOT, TailorError, add_traceback_arg, command
from features.schema import EVENT_TYPES
from features.synthetic import generate_with_truth
from models.bundle import Bundle
from models.ranking import PURCHASE
from models.registry import resolve_model
from serving.process import served, sigterm_unwinds

TRAIN = ["--data", "synthetic", "--epochs", "4", "--dim", "32", "--encoder", "pooling",
         "--max-minutes", "2", "--no-progress", "--run-name", "demo"]
K = 5
RULE = "─" * 78


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailor-demo",
        description="Train a small two-tower model on the embedded shop, register it, serve it "
                    "with BentoML, send example requests and print them, then keep serving "
                    "until Ctrl-C.")
    parser.add_argument("--port", type=int, default=3000, help="HTTP port (default: %(default)s)")
    parser.add_argument("--model", metavar="REF",
                        help="serve this model (alias, version, run id or bundle folder) "
                             "instead of training one; it should be trained on the embedded shop")
    parser.add_argument("--once", action="store_true",
                        help="stop the server after the examples instead of serving on")
    add_traceback_arg(parser)
    return parser


def train() -> str:
    """Run the demo training (its output streams through); the registered version."""
    cmd = [sys.executable, "-m", "training.train", *TRAIN]
    print(f"$ python -m training.train {' '.join(TRAIN)}", flush=True)
    version = None
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) as proc:
        try:
            for line in proc.stdout:
                print(line, end="", flush=True)
                found = re.match(r"registry\s+\S+ v(\d+)", line)
                version = found.group(1) if found else version
        except KeyboardInterrupt:   # SIGTERM reaches the demo alone: pass it on
            proc.terminate()
            raise
    if proc.returncode != 0 or version is None:
        raise TailorError(f"demo training failed (exit {proc.returncode})")
    return version


def show(client: httpx.Client, title: str, route: str, body: dict,
         mark: dict[str, str] | None = None) -> dict:
    """Send one request and print it (as curl) with its answer as a table."""
    url = str(client.base_url).rstrip("/") + route
    print(f"\n{RULE}\n{title}\n$ curl -s -X POST {url} "
          f"-H 'Content-Type: application/json' \\\n    -d '{json.dumps(body)}'")
    started = time.perf_counter()
    response = client.post(route, json=body)
    ms = 1000 * (time.perf_counter() - started)
    answer = response.json()
    if response.status_code != 200:
        print(f"  HTTP {response.status_code}: {json.dumps(answer)}")
        return answer
    if "segments" in answer:
        print(f"  model {answer['model_version']} · {ms:.0f} ms")
        for segment in answer["segments"]:
            print(f"  - {segment['name']:<22} {segment['kind']:<8} {segment['rule']}")
        return answer
    if "items" not in answer:
        print(f"  {json.dumps(answer)} · {ms:.0f} ms")
        return answer
    print(f"  strategy {answer['strategy']} · model {answer['model_version']} · {ms:.0f} ms")
    for item in answer["items"]:
        note = (mark or {}).get(item["item_id"], "")
        source = f"  [{item['source']}]" if item.get("source") else ""
        score = f"{item['score']:>9.3f}" if item["score"] is not None else f"{'-':>9}"
        print(f"  {item['rank']:>3}. {item['item_id']:<10} {item.get('title') or '':<26} "
              f"{item.get('category_id') or '':<18} {score}{source}{note}"
              f"{because(item.get('because'))}")
    return answer


def because(reason: dict | None) -> str:
    """An item's ``because`` as a short note."""
    if not reason:
        return ""
    text = reason["kind"].replace("_", " ")
    if reason.get("item_id"):
        text += f" {reason['item_id']}"
    if reason.get("event"):
        text += f" ({reason['event']})"
    if reason.get("rule"):
        text += f": {reason['rule']}"
    return f"   · {text}"


def returning_shopper(bundle: Bundle) -> tuple[str, list[tuple[str, str]]]:
    """A shopper with a long stored history that includes purchases, and that history as
    (item_id, event) pairs, oldest first."""
    h = bundle.histories
    buys = h.count(h.event_code == PURCHASE)
    position = int(np.argmax(np.where(buys > 0, h.lengths + 5 * buys, -1)))
    start, end = h.offsets[position], h.offsets[position + 1]
    return str(h.user_ids[position]), [
        (str(bundle.item_vocab.ids[row]), EVENT_TYPES[code])
        for row, code in zip(h.item_idx[start:end], h.event_code[start:end], strict=True)]


def examples(client: httpx.Client, bundle_path: Path) -> None:
    """``bundle_path``: the served bundle, resolved here from the model reference given to the
    server (``/model`` names no host path)."""
    data, truth = generate_with_truth("small")
    titles = data.items.set_index("item_id")["title"] if "title" in data.items else pd.Series()
    card = client.post("/model").json()
    metrics = card["test_metrics"].get("tailor", {})
    print(f"\nserving {card['model_version']} (trained {card['trained_at']}, "
          f"{card['items']:,} items, {card['known_shoppers']:,} shoppers; test ndcg@10 "
          f"{metrics.get('ndcg@10', float('nan')):.3f}; {card['ranking']})")

    user, history = returning_shopper(Bundle.load(bundle_path))
    recent = "; ".join(f"{e} {titles.get(i, i)}" for i, e in history[-4:])
    show(client, f"1. A returning shopper, {user} ({len(history)} stored events; lately: "
                 f"{recent})", "/recommend", {"user_id": user, "k": K})
    show(client, "2. A first-time visitor: nothing known, so the most popular items of the "
                 "recent window", "/recommend", {"user_id": "first-time-visitor", "k": K})
    printer = truth.printer_item
    session = [{"item_id": printer, "event": "view"}, {"item_id": printer, "event": "view"},
               {"item_id": printer, "event": "addtocart"}]
    show(client, f"3. The same visitor's session: viewed {titles.get(printer, printer)} twice, "
                 f"added it to the cart", "/recommend",
         {"user_id": "first-time-visitor", "k": K, "recent_events": session},
         mark={truth.printer_ink: "   <- its ink"})
    show(client, f"4. People who bought {titles.get(printer, printer)} ({printer}) also bought",
         "/also_bought", {"item_id": printer, "k": K},
         mark={truth.printer_ink: "   <- its ink (planted complement)"})
    show(client, f"5. Items like {titles.get(printer, printer)}, only of its category "
                 "(same: any item attribute: brand, scent, ...)", "/similar_items",
         {"item_id": printer, "k": K, "same": ["category_id"]})
    merchandising(client, user, {i for i, _ in history}, printer, truth, titles)
    live_events(client, user, truth, bundle_path)
    show(client, "13. The segments demo-visitor is in now: the rules of segments.toml (a cart "
                 "it did not buy) and a learned segment", "/segments", {"user_id": "demo-visitor"})
    new_item(client, data.items, truth)
    show(client, "15. Bad input gets a 4xx naming the field", "/recommend",
         {"user_id": user, "k": 0, "diversity": 2})


def new_item(client: httpx.Client, items: pd.DataFrame, truth) -> None:
    """An item added while serving: placed by its category and attributes, no retraining."""
    printer = truth.printer_item
    meta = items.set_index("item_id").loc[printer]
    new = {"item_id": "printer-x2-new", "category_id": str(meta["category_id"]),
           "title": "printer X2 (new today)",
           **({"price": float(meta["price"])} if "price" in meta else {})}
    show(client, f"14. A new item for the catalog, in {new['category_id']}: every worker places "
                 "it by its category and price (no retraining)", "/admin/items",
         {"items": [new]})
    show(client, "... /similar_items finds its neighbours", "/similar_items",
         {"item_id": new["item_id"], "k": K})
    show(client, "... and a visitor who looks at it and at the printer is recommended it",
         "/recommend", {"user_id": "new-item-visitor", "k": K, "recent_events": [
             {"item_id": printer, "event": "view"},
             {"item_id": new["item_id"], "event": "view"}]},
         mark={new["item_id"]: "   <- the new item"})


def live_events(client: httpx.Client, user: str, truth, bundle_path: Path) -> None:
    """Events posted to the store change the next answer; a model swap without a restart; a
    forgotten shopper gets the first-time visitor's answer."""
    visitor, printer, ink = "demo-visitor", truth.printer_item, truth.printer_ink
    show(client, f"10. {visitor} before any event: the popular items", "/recommend",
         {"user_id": visitor, "k": K})
    show(client, "... the shop posts two events as they happen (stored durably, then answered)",
         "/events", {"events": [
             {"user_id": visitor, "item_id": printer, "event": "view", "event_id": "demo-1"},
             {"user_id": visitor, "item_id": printer, "event": "addtocart",
              "event_id": "demo-2"}]})
    show(client, "... and the very next /recommend follows them (no session in the request)",
         "/recommend", {"user_id": visitor, "k": K}, mark={ink: "   <- its ink"})
    card = client.post("/model").json()
    version = card["model_version"].rpartition("/")[2]
    target = str(int(version) - 1) if version.isdigit() and int(version) > 1 else \
        str(bundle_path)
    show(client, f"11. A model swap without a restart: every worker loads {target} beside "
                 f"{card['model_version']} and switches between requests", "/admin/reload",
         {"model": target})
    deadline = time.monotonic() + 60
    now = card["model_version"]
    while time.monotonic() < deadline and now == card["model_version"]:
        time.sleep(1.0)
        now = client.post("/model").json()["model_version"]
    same = " (the same weights under another reference: no other version is registered yet)" \
        if target == str(bundle_path) else ""
    print(f"  /model: {card['model_version']} -> {now}{same}")
    show(client, f"12. Forget {user} (privacy): their events are deleted, their stored history "
                 "is no longer used, the deletion is audited", "/admin/forget",
         {"user_id": user, "by": "demo"})
    show(client, f"... {user} now gets the first-time visitor's answer", "/recommend",
         {"user_id": user, "k": K})


def merchandising(client: httpx.Client, user: str, seen: set[str], printer: str, truth,
                  titles) -> None:
    """Diversity off and on, a boost and a pin, and cart completion."""
    plain = show(client, f"6. {user} again with diversity: re-ranked by maximal marginal "
                         "relevance, at most 2 items of one category", "/recommend",
                 {"user_id": user, "k": K, "diversity": 0.5, "max_per_category": 2})
    leaf = next((i["category_id"] for i in plain["items"] if i.get("category_id")), None)
    # A promotion the shopper has not bought already (bought items never come back).
    promoted = next(i for i in [truth.printer_ink, *truth.complements.values()] if i not in seen)
    show(client, f"7. A merchandiser's boost (category {leaf}) and a promotion pinned at slot 2 "
                 "(rules.toml takes the same rules for every request)", "/recommend",
         {"user_id": user, "k": K, "boosts": [{"category": leaf, "multiply": 1.5}],
          "pins": [{"item_id": promoted, "slot": 2}]},
         mark={promoted: "   <- the promotion"})
    ink = truth.printer_ink
    show(client, f"8. Complete the cart: {titles.get(printer, printer)} in it; bought-together "
                 "items of the whole cart first, other printers (substitutes) last",
         "/complete_cart", {"user_id": user, "cart": [printer], "k": K},
         mark={ink: "   <- its ink"})
    other = next(a for a, c in truth.complements.items() if a != printer)
    show(client, "9. A cart of two anchors: each one's complement", "/complete_cart",
         {"cart": [printer, other], "k": K},
         mark={ink: "   <- the printer's ink", truth.complements[other]: "   <- the other's"})


def campaign(model: str) -> None:
    """`make campaign`: a small email export for one segment, as a marketer would run it."""
    out = ROOT / ".cache" / "demo-campaign"
    segment = "cart abandoner"
    print(f"\n{RULE}\n16. A campaign file for the segment {segment!r}, three items each\n"
          f"$ make campaign MODEL={model} SEGMENT='{segment}' K=3 OUT={out.relative_to(ROOT)}")
    proc = subprocess.run([sys.executable, "-m", "serving.campaign", "--model", model,
                           "--segment", segment, "--k", "3", "--out", str(out),
                           "--no-progress"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TailorError(f"campaign export failed: {proc.stderr.strip()[-300:]}")
    print("  " + proc.stdout.strip().splitlines()[-1])
    for line in (out / "campaign.csv").read_text().splitlines()[:7]:
        print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (a supervisor, `kill`) stops the server and its workers as Ctrl-C does.
    with sigterm_unwinds():
        return _demo(args)


def _demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    model = args.model or train()
    log = ROOT / ".cache" / "demo-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"\nstarting  bentoml serve serving.service:Tailor (model {model}, port {args.port}; "
          f"log {log.relative_to(ROOT)})", flush=True)
    # The demo's own event store, fresh each run: its events and its forgotten shopper never
    # touch the project's store (events/events.db).
    store = ROOT / ".cache" / "demo-events.db"
    for path in store.parent.glob(store.name + "*"):
        path.unlink()
    os.environ[URL_ENV] = f"sqlite:///{store}"
    with served(model, args.port, log, port_hint="PORT=...") as server:
        bundle_path = resolve_model(model)   # what the server loaded (it resolved it already)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            examples(client, bundle_path)
        campaign(model)
        print(f"\n{RULE}\ndemo ready in {time.perf_counter() - started:.0f} s. Serving at "
              f"{server.url} (OpenAPI page there; /healthz, /readyz, /metrics)"
              + ("" if args.once else "; Ctrl-C to stop."), flush=True)
        if not args.once:
            server.proc.wait()
    return 0


cli = command(main)  # `tailor-demo` (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()
