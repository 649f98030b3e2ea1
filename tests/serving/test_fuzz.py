"""Schema fuzzing: schemathesis generates requests from a real server's OpenAPI spec, valid ones
(positive) and ones that break it (negative), for every operation. No answer may be a 5xx, and
every 4xx must name the field at fault, as the hand-written cases of test_service_e2e.py do."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from features.event_store import URL_ENV
from serving.process import free_port, served, tail

schemathesis = pytest.importorskip("schemathesis")   # requirements-bench.txt (make test)
hypothesis = pytest.importorskip("hypothesis")

pytestmark = pytest.mark.slow

# Per operation and mode: 11 operations x 2 modes x 25 cases stay well under a minute on two
# busy cores; derandomized, so a failure comes back on the next run.
EXAMPLES = 25
# pydantic's errors about the body as a whole (not JSON, not an object) have an empty loc: the
# field at fault is the body.
WHOLE_BODY = {"json_invalid", "model_type", "model_attributes_type", "dict_type"}


def problem(response) -> str | None:
    """Why an answer is wrong, or None."""
    status = response.status_code
    if status >= 500:
        return f"HTTP {status}: {response.text[:300]}"
    if status < 400:
        return None
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status} without a JSON detail: {response.text[:300]}"
    if not isinstance(detail, list) or not detail:
        return f"HTTP {status}: empty detail: {response.text[:300]}"
    for entry in detail:
        if not entry.get("loc") and entry.get("type") not in WHOLE_BODY:
            return f"HTTP {status}: a detail names no field: {response.text[:300]}"
    return None


def fuzz(operation, mode, url: str) -> list[tuple[int, str | None, str]]:
    """(status, problem, request) of EXAMPLES generated cases of ``operation`` in ``mode``."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    seen: list[tuple[int, str | None, str]] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case) -> None:
        response = case.call(base_url=url, timeout=30)
        seen.append((response.status_code, problem(response),
                     f"{case.method} {case.path} ({mode.value}) body {str(case.body)[:300]}"))

    try:
        check()
    except Unsatisfiable:   # nothing to break: /model takes no input
        assert not mode.is_positive and not operation.body, operation.path
    return seen


def test_fuzzed_requests_get_no_5xx_and_every_4xx_names_a_field(bundle_dir: Path,
                                                                tmp_path: Path,
                                                                monkeypatch) -> None:
    from schemathesis import GenerationMode

    monkeypatch.setenv(URL_ENV, f"sqlite:///{tmp_path / 'events.db'}")   # its own events
    seen: list[tuple[int, str | None, str]] = []
    with served(bundle_dir, free_port(), tmp_path / "server.log") as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/docs.json", timeout=30)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/recommend", "/events", "/model"}
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                seen += fuzz(operation, mode, server.url)
        log = tail(server.log, 40)
    print(f"{len(seen)} cases: {Counter(status for status, _, _ in seen)}")
    failures = [f"{request}: {why}" for _, why, request in seen if why]
    assert len(seen) >= len(operations) * EXAMPLES
    assert not failures, "\n".join(failures[:10]) + f"\n\nserver log:\n{log}"
