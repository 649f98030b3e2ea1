"""Shopper segments over a loaded model: the rule-based ones of a TOML file a marketer edits
(``features/segments.py``; default ``segments.toml`` at the project root, ``$TAILOR_SEGMENTS``
for the service) and learned ones (``models/segments.py``: k-means over the user vectors).

    tailor-segments --model champion --out segments/ [--rules FILE] [--learned 8]

``make segments`` writes ``shopper_segments.parquet`` and ``.csv`` (user_id, segment, kind),
``profiles.json`` (each segment's size, rule or top categories and items) and
``segments.png`` (the user vectors in 2-D coloured by learned segment, and each segment's top
categories), and logs them to the MLflow experiment ``tailor-segments``. ``/segments`` answers
one shopper's segments from the same ``Segmenter``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from features.config import add_config_args, config_from_args, setting
from features.history import Histories
from features.infra import ROOT, add_traceback_arg, atomic_path, command
from features.segments import SegmentRule, check_categories, evaluate, load_rules
from models.segments import LearnedSegments, describe, learn_segments
from serving.api import Segment, SegmentRequest, ShopperSegments
from serving.engine import Engine, load_engine, session_history

DEFAULT_RULES = ROOT / "segments.toml"
RULES_ENV = "TAILOR_SEGMENTS"
CHUNK = 4096   # shoppers per user-tower forward
NOT_IN_METRIC_NAMES = re.compile(r"[^\w.\- /]")


@dataclass(frozen=True)
class SegmentConfig:
    rules: str = setting(str(DEFAULT_RULES), "TOML file of rule-based segments ('' for none)")
    learned: int = setting(8, "learned segments: k-means over the user vectors (0 for none)")
    seed: int = setting(0, "seed of the k-means")


def user_vectors(engine: Engine, hist: Histories) -> np.ndarray:
    """The towers' user vectors, in chunks; zero for an empty history."""
    parts = [engine.towers.user_vectors(hist.select(np.arange(s, min(s + CHUNK, len(hist)))))
             for s in range(0, len(hist), CHUNK)]
    return np.concatenate(parts) if parts else np.zeros((0, engine.bundle.model.cfg.dim),
                                                        dtype=np.float32)


class Segmenter:
    """The segments of one model: rules read and checked against its items at once (a bad file
    stops a start), centroids learned from every stored shopper on first use."""

    def __init__(self, engine: Engine, cfg: SegmentConfig = SegmentConfig()) -> None:
        self.engine, self.cfg = engine, cfg
        self.rules: list[SegmentRule] = load_rules(cfg.rules) if cfg.rules else []
        known = {c for column in (engine.categories, engine.parents) if column is not None
                 for c in column if c}
        check_categories(self.rules, known, cfg.rules)

    @cached_property
    def vectors(self) -> np.ndarray:
        """The user vectors of every stored shopper."""
        return user_vectors(self.engine, self.engine.bundle.histories)

    @cached_property
    def learned(self) -> LearnedSegments | None:
        return learn_segments(self.vectors, self.cfg.learned, self.cfg.seed) \
            if self.cfg.learned else None

    @cached_property
    def assignment(self) -> np.ndarray:
        """Each stored shopper's learned segment (-1: none)."""
        if self.learned is None:
            return np.full(len(self.engine.bundle.histories), -1, dtype=np.int64)
        return self.learned.assign(self.vectors)

    @cached_property
    def profiles(self) -> list[dict]:
        """Each learned segment's size, top categories and top items."""
        if self.learned is None:
            return []
        out = describe(self.assignment, self.engine.bundle.histories, len(self.learned),
                       self.engine.categories, self.engine.ids)
        return [p | {"name": learned_name(p["segment"])} for p in out]

    def table(self) -> pd.DataFrame:
        """One row per (stored shopper, segment): user_id, segment, kind."""
        hist = self.engine.bundle.histories
        member = evaluate(self.rules, hist, self.engine.categories, self.engine.parents)
        users, which = np.nonzero(member)
        frames = [pd.DataFrame({"user_id": hist.user_ids[users],
                                "segment": [self.rules[j].name for j in which], "kind": "rule"})]
        if self.learned is not None:
            has = self.assignment >= 0
            frames.append(pd.DataFrame({
                "user_id": hist.user_ids[has],
                "segment": [learned_name(s) for s in self.assignment[has]], "kind": "learned"}))
        out = pd.concat(frames, ignore_index=True)
        return out.astype({"user_id": "string", "segment": "string", "kind": "string"})

    def of(self, hist: Histories) -> list[list[dict]]:
        """Each history's segments: the rules it meets, then its learned segment."""
        member = evaluate(self.rules, hist, self.engine.categories, self.engine.parents)
        learned = self.learned.assign(user_vectors(self.engine, hist)) \
            if self.learned is not None else np.full(len(hist), -1)
        out = []
        for i in range(len(hist)):
            found = [{"name": r.name, "kind": "rule", "rule": r.describe()}
                     for r, hit in zip(self.rules, member[i], strict=True) if hit]
            if learned[i] >= 0:
                found.append({"name": learned_name(learned[i]), "kind": "learned",
                              "rule": _top_categories(self.profiles[learned[i]])})
            out.append(found)
        return out

    def rule_profiles(self, member_counts: np.ndarray) -> list[dict]:
        return [{"name": r.name, "kind": "rule", "rule": r.describe(), "line": r.line,
                 "shoppers": int(c)} for r, c in zip(self.rules, member_counts, strict=True)]


def learned_name(segment: int) -> str:
    return f"learned-{int(segment)}"


def _top_categories(profile: dict) -> str:
    tops = profile.get("top_categories") or profile.get("top_items") or []
    return "mostly " + ", ".join(t.get("category_id", t.get("item_id")) for t in tops[:3])


def shopper_segments(segmenter: Segmenter, request: SegmentRequest) -> ShopperSegments:
    """``/segments``: the shopper's segments from the stored history and the session."""
    engine = segmenter.engine
    hist = session_history(engine, request.user_id, request.recent_events).histories
    (found,) = segmenter.of(hist)
    return ShopperSegments(user_id=request.user_id, model_version=engine.version,
                           segments=[Segment(**s) for s in found])


def segmenter_for_service(engine: Engine) -> Segmenter:
    """The service's segments: ``$TAILOR_SEGMENTS`` (a rules file, which must exist) or the
    project's ``segments.toml`` when there is one (an installed package has none: learned
    segments only)."""
    rules = os.environ.get(RULES_ENV) or (str(DEFAULT_RULES) if DEFAULT_RULES.is_file() else "")
    return Segmenter(engine, SegmentConfig(rules=rules))


# --- make segments ------------------------------------------------------------------------------

def write(segmenter: Segmenter, out: Path) -> dict:
    """The shopper table, the profiles and the picture into the folder ``out`` (replaced whole
    once complete). Returns the profiles."""
    table = segmenter.table()
    counts = table[table["kind"] == "rule"]["segment"].value_counts()
    profiles = {"rules": segmenter.rule_profiles(
                    np.array([counts.get(r.name, 0) for r in segmenter.rules])),
                "learned": segmenter.profiles,
                "shoppers": len(segmenter.engine.bundle.histories),
                "model": segmenter.engine.ref}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        table.to_parquet(tmp / "shopper_segments.parquet", index=False)
        table.to_csv(tmp / "shopper_segments.csv", index=False)
        (tmp / "profiles.json").write_text(json.dumps(profiles, indent=2) + "\n")
        if segmenter.learned is not None:
            picture(segmenter).savefig(tmp / "segments.png", dpi=110, bbox_inches="tight")
    return profiles


def picture(segmenter: Segmenter):
    """Left: the user vectors projected on their two main axes, coloured by learned segment;
    right: each learned segment's top categories (share of its shoppers' events)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vectors, assignment = segmenter.vectors, segmenter.assignment
    has = assignment >= 0
    rng = np.random.default_rng(segmenter.cfg.seed)
    shown = rng.permutation(np.flatnonzero(has))[:5000]
    centred = vectors[has] - vectors[has].mean(0)
    _, _, axes = np.linalg.svd(centred[:20000], full_matrices=False)
    xy = (vectors[shown] - vectors[has].mean(0)) @ axes[:2].T
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    for s in range(len(segmenter.profiles)):   # one colour per segment, the same on the right
        on = assignment[shown] == s
        left.scatter(xy[on, 0], xy[on, 1], color=plt.cm.tab10(s % 10), s=4, label=str(s))
    left.set_title("shoppers' vectors (2 main axes), by learned segment")
    left.legend(title="segment", fontsize=7, loc="best", markerscale=3)
    labels = [f"{learned_name(p['segment'])} ({p['share']:.0%}): {_top_categories(p)}"
              for p in segmenter.profiles]
    right.barh(range(len(labels)), [p["share"] for p in segmenter.profiles],
               color=[plt.cm.tab10(i % 10) for i in range(len(labels))])
    right.set_yticks(range(len(labels)), labels, fontsize=7)
    right.invert_yaxis()
    right.set_xlabel("share of shoppers")
    right.set_title("learned segments and their top categories")
    fig.tight_layout()
    return fig


def log_to_mlflow(out: Path, profiles: dict, cfg: SegmentConfig) -> str:
    """One run in the experiment ``tailor-segments``: settings, shoppers per segment, the
    folder ``out`` as artifacts; returns the run id."""
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from models.registry import configure, ensure_experiment

    client = MlflowClient(configure())
    run = client.create_run(ensure_experiment("segments", client),
                            run_name=f"segments {profiles['model']}")
    now = int(time.time() * 1000)
    params = {"model": profiles["model"], "rules": cfg.rules, "learned": cfg.learned,
              "seed": cfg.seed}
    metrics = [Metric(f"segment/{NOT_IN_METRIC_NAMES.sub('_', p['name'])}/shoppers",
                      float(p["shoppers"]), now, 0)
               for p in profiles["rules"] + profiles["learned"]]
    client.log_batch(run.info.run_id, metrics=metrics,
                     params=[Param(k, str(v)) for k, v in params.items()])
    client.log_artifacts(run.info.run_id, str(out), artifact_path="segments")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailor-segments",
        description="Write every stored shopper's segments (rule-based and learned), the "
                    "segment profiles and a picture of them; log them to MLflow.")
    parser.add_argument("--model", default="champion",
                        help="registry alias, version, run id or bundle folder (default: "
                             "champion)")
    parser.add_argument("--out", required=True, help="output folder (replaced when complete)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    add_config_args(parser, SegmentConfig, title="segments")
    add_traceback_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(SegmentConfig, args)
    segmenter = Segmenter(load_engine(args.model), cfg)
    out = Path(args.out)
    profiles = write(segmenter, out)
    for p in profiles["rules"]:
        print(f"rule     {p['name']:<28} {p['shoppers']:>8,} shoppers  {p['rule']}")
    for p in profiles["learned"]:
        print(f"learned  {p['name']:<28} {p['shoppers']:>8,} shoppers  {_top_categories(p)}")
    print(f"wrote    {out}/shopper_segments.parquet, .csv, profiles.json, segments.png")
    if not args.no_mlflow:
        print(f"mlflow   run {log_to_mlflow(out, profiles, cfg)} (experiment tailor-segments)")
    return 0


cli = command(main)  # `tailor-segments` (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()
