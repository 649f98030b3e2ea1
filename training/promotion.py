"""Promotion: a new version becomes ``champion`` only when it beats the champion beyond noise.

Every new version gets the alias ``candidate``. ``champion`` moves to it when there is no
champion yet, or when its lift over the champion on ``score_key`` (NDCG@10 of the test fold) is
larger than the **margin**: 1.96 bootstrap standard errors of that lift, resampling the test
shoppers (``margin.py``). A lift within the margin is noise and keeps the champion. Which numbers
are compared depends on where the champion was evaluated:

- same data (``data.hash``) and protocol: both runs' per-shopper values on the same test
  shoppers (``results/test_per_user.csv`` of each run), a paired bootstrap;
- other data (a log that has grown since, another file): the champion is scored again on the new
  version's own test shoppers (``training/challenge.py``, passed in as ``score_champion``), a
  paired bootstrap there; without that score the champion is kept and the decision says so;
- a champion refitted on data that covers the new test window would be graded on what it
  trained on (``ChampionSawTestData``): each run's own test fold, an unpaired bootstrap.

A run without per-shopper values (logged before they existed) is compared by its mean alone,
with the margin of the side that has them, or none, and the reason says so. ``force=True``
(after a human looked) promotes regardless. The decision, the interval and what was compared go
to the run (tags ``promotion.*``, ``promotion.json``) and to the version's description.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from models.registry import CANDIDATE, CHAMPION, MODEL_NAME
from training.margin import Lift, bootstrap_lift

PER_USER_ARTIFACT = "results/test_per_user.csv"


class ChampionSawTestData(Exception):
    """The champion was refitted on data that covers this run's test window: scoring it there
    would grade it on what it trained on."""


def _alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def run_metric(metrics: dict[str, float], key: str) -> float | None:
    """``key`` in a run's metrics, also as runs logged before the names changed spelled it
    (``test.tailor.ndcg_at_10``, and ``two_tower`` for the served ranking before that)."""
    if key in metrics:
        return metrics[key]
    dotted = key.replace("/", ".")
    return metrics.get(dotted, metrics.get(dotted.replace(".tailor.", ".two_tower.")))


def _data_of(client: MlflowClient, mv: ModelVersion) -> tuple[str | None, str | None, dict]:
    """(data hash, protocol, run metrics) of a version: its own tags first, then its run's."""
    run = client.get_run(mv.run_id) if mv.run_id else None
    tags = {**(run.data.tags if run else {}), **(mv.tags or {})}
    return tags.get("data.hash"), tags.get("data.protocol"), dict(run.data.metrics) if run else {}


def per_user_values(client: MlflowClient, run_id: str | None) -> pd.Series | None:
    """A run's per-test-shopper values of the score metric (index user_id), or None."""
    if not run_id:
        return None
    try:
        local = client.download_artifacts(run_id, PER_USER_ARTIFACT)
    except (MlflowException, OSError):
        return None
    frame = pd.read_csv(Path(local), dtype={"user_id": str})
    return frame.set_index("user_id").iloc[:, 0]


def promote(client: MlflowClient, version: ModelVersion | str | int, *, score_key: str,
            data_hash: str, protocol: str, force: bool = False, name: str = MODEL_NAME,
            score_champion: Callable[[ModelVersion], pd.Series] | None = None,
            seed: int = 0) -> dict[str, Any]:
    """Mark ``version`` candidate; make it champion by the rule in the module docstring.

    ``score_key`` is a run metric, higher is better (e.g. ``test/tailor/ndcg_at_10``).
    ``score_champion``: the champion's per-shopper values of that metric on this version's own
    test shoppers (``training/challenge.py``), asked for only when the champion was evaluated on
    other data or under another protocol; None keeps such a champion.
    """
    mv = version if isinstance(version, ModelVersion) else \
        client.get_model_version(name, str(version))
    name, ver = mv.name, str(mv.version)
    client.set_model_version_tag(name, ver, "data.hash", data_hash)
    client.set_model_version_tag(name, ver, "data.protocol", protocol)
    client.set_registered_model_alias(name, CANDIDATE, ver)
    score = run_metric(_data_of(client, mv)[2], score_key)
    decision: dict[str, Any] = {
        "model": name, "version": int(ver), "run_id": mv.run_id, "score_key": score_key,
        "score": score, "data_hash": data_hash, "protocol": protocol, "force": force,
        "champion_version": None, "champion_score": None, "champion_data_hash": None,
        "champion_protocol": None, "comparable": None, "champion_score_here": None,
        "lift": None,
    }
    champion = _alias(client, name, CHAMPION)
    already = champion is not None and champion.version == mv.version
    if champion is not None and not already:
        c_hash, c_protocol, c_metrics = _data_of(client, champion)
        decision.update(champion_version=int(champion.version), champion_data_hash=c_hash,
                        champion_protocol=c_protocol,
                        champion_score=run_metric(c_metrics, score_key),
                        comparable=(c_hash == data_hash and c_protocol == protocol
                                    and run_metric(c_metrics, score_key) is not None))
        mine = per_user_values(client, mv.run_id)
        theirs, paired = _champion_values(client, champion, decision, score_champion)
        if score is not None and (theirs is not None or decision["champion_score"] is not None
                                  or decision["champion_score_here"] is not None):
            decision["lift"] = _lift(score, mine, theirs, decision, paired, seed).to_dict()
    promoted, reason = _decide(decision, already)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, ver)
    decision.update(promoted=promoted, reason=reason,
                    decided_at=pd.Timestamp.now(tz="UTC").isoformat())
    _log_decision(client, mv, decision)
    return decision


def _champion_values(client: MlflowClient, champion: ModelVersion, d: dict[str, Any],
                     score_champion: Callable[[ModelVersion], pd.Series] | None
                     ) -> tuple[pd.Series | None, bool]:
    """The champion's per-shopper values to compare with, and whether they pair with ours."""
    if d["comparable"]:
        return per_user_values(client, champion.run_id), True
    if score_champion is None:
        return None, False
    try:
        here = score_champion(champion)
    except ChampionSawTestData as exc:
        d["champion_saw_test"] = str(exc)
        return per_user_values(client, champion.run_id), False
    except Exception as exc:  # an old or broken bundle: keep the champion, say why
        d["champion_error"] = f"{type(exc).__name__}: {exc}"[:300]
        return None, False
    mean = float(here.mean()) if len(here) else math.nan
    d["champion_score_here"] = mean if math.isfinite(mean) else None
    return (here if len(here) else None), True


def _lift(score: float, mine: pd.Series | None, theirs: pd.Series | None, d: dict[str, Any],
          paired: bool, seed: int) -> Lift:
    """The candidate's lift over the champion with its bootstrap margin."""
    base = d["champion_score_here"] if d["champion_score_here"] is not None else \
        d["champion_score"]
    if mine is not None and theirs is not None and paired:
        common = mine.index.intersection(theirs.index)
        if len(common):
            return bootstrap_lift(mine.loc[common].to_numpy(), theirs.loc[common].to_numpy(),
                                  paired=True, seed=seed)
    if mine is not None and theirs is not None:
        return bootstrap_lift(mine.to_numpy(), theirs.to_numpy(), paired=False, seed=seed)
    # One side's values (or none): the other is taken as a fixed number.
    return bootstrap_lift(mine.to_numpy() if mine is not None else None,
                          theirs.to_numpy() if theirs is not None else None, paired=False,
                          seed=seed, candidate_mean=score, champion_mean=base)


def _decide(d: dict[str, Any], already: bool) -> tuple[bool, str]:
    if already:
        return True, "already champion"
    if d["force"]:
        return True, "forced"
    if d["champion_version"] is None:
        return True, "no champion yet"
    if d["score"] is None:
        return False, f"run has no metric {d['score_key']}"
    champ = f"champion v{d['champion_version']}"
    where = ""
    if d.get("champion_saw_test"):
        if d["champion_score"] is None:
            return False, (f"{champ} was refitted on this run's test window and has no logged "
                           f"score: kept (use force)")
        # Scored here it would be graded on what it trained on: each on its own test fold.
        where = (f", each on its own test fold (the champion was refitted on data that covers "
                 f"this run's test window: {d['champion_saw_test']})")
    elif not d["comparable"]:
        if d["champion_score_here"] is None:
            return False, (f"{champ} was evaluated on other data or protocol: scores are not "
                           "comparable, champion kept (use force)")
        where = " on this run's test data"
    elif d["champion_score"] is None:
        return False, f"champion has no metric {d['score_key']}: kept (use force)"
    lift = d["lift"]
    verdict = lift["lift"] > lift["margin"]
    return verdict, (f"lift {lift['lift']:+.4g} over {champ} ({lift['champion']:.6g}) "
                     f"{'>' if verdict else '<='} margin {lift['margin']:.4g} "
                     f"({lift['method']}){where}")


def describe(d: dict[str, Any]) -> str:
    """The registered version's description: what it was compared with, and the outcome."""
    lines = [f"{'Champion' if d['promoted'] else 'Candidate'}: {d['reason']}."]
    lift = d.get("lift")
    if lift:
        low, high = lift["interval"]
        lines.append(f"{d['score_key']}: {lift['candidate']:.4f} against {lift['champion']:.4f}; "
                     f"lift {lift['lift']:+.4f}, 95% bootstrap interval [{low:+.4f}, "
                     f"{high:+.4f}] over {lift['shoppers']:,} test shoppers.")
    lines.append(f"Data {d['data_hash'][:12]} ({d['protocol']}); run {d['run_id']}.")
    return "\n\n".join(lines)


def _log_decision(client: MlflowClient, mv: ModelVersion, decision: dict[str, Any]) -> None:
    # Tags, not params: a later forced promotion of the same run must be able to overwrite them.
    lift = decision.get("lift") or {}
    summary = {"promotion.decision": "champion" if decision["promoted"] else "candidate",
               "promotion.reason": decision["reason"],
               "promotion.score_key": decision["score_key"],
               "promotion.score": str(decision["score"]),
               "promotion.champion_version": str(decision["champion_version"]),
               "promotion.champion_score": str(decision["champion_score"]),
               "promotion.champion_score_here": str(decision["champion_score_here"]),
               "promotion.margin": str(lift.get("margin"))}
    client.set_model_version_tag(mv.name, str(mv.version), "promotion.decision",
                                 summary["promotion.decision"])
    client.update_model_version(mv.name, str(mv.version), description=describe(decision))
    if not mv.run_id:
        return
    for key, value in summary.items():
        client.set_tag(mv.run_id, key, value)
    client.log_dict(mv.run_id, decision, "promotion.json")
