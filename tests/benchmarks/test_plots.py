"""benchmarks.plots on small made-up results: every picture written as a PNG, a part without
results skipped with a line, the pictures linked in BENCHMARKS.md (by publish and by a redraw)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import benchmarks.common as common
from benchmarks import plots

PNG = b"\x89PNG\r\n\x1a\n"


def methods(scale: float, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return {name: {"ndcg@10": scale / (i + 1), "hr@10": 1.6 * scale / (i + 1)}
            for i, name in enumerate(names)}


def quality() -> dict[str, Any]:
    served = {"protocol": "temporal", "methods": methods(0.3, ("tailor (served)", "repeat"))}
    return {"settings": {}, "results": {"runs": [
        {"name": "Toys", "protocol": "leave-one-out",
         "methods": methods(0.07, ("tailor", "seq-item-knn", "towers", "most-popular"))},
        {"name": "synthetic", "protocol": "temporal", "served": served,
         "methods": methods(0.4, ("tailor", "repeat", "towers"))},
    ]}}


def index() -> dict[str, Any]:
    rows = [{"factory": "Flat", "index": "Flat", "params": "exact", "recall_at_10": 1.0,
             "batch_qps": 9000.0, "single_qps": 2000.0, "tuning": []},
            {"factory": "auto-ivf", "index": "IVF64,Flat", "params": "nprobe=8 (gate 0.97)",
             "recall_at_10": 0.97, "batch_qps": 15000.0, "single_qps": 2900.0,
             "tuning": [{"nprobe": 1, "recall": 0.4, "ms_per_query": 0.01},
                        {"nprobe": 8, "recall": 0.97, "ms_per_query": 0.05}]},
            {"factory": "HNSW32,Flat", "index": "HNSW32,Flat", "seconds": 9.0,
             "error": "out of memory"}]
    catalog = {"title": "Trained item embeddings", "items": 1000, "dim": 16, "rows": rows}
    return {"settings": {"k": 10, "min_recall": 0.95, "batch_size": 256},
            "results": {"trained": catalog}}


def serve() -> dict[str, Any]:
    http = [{"route": route, "name": name, "concurrency": c, "rate": rate, "rps": rps,
             "p50_ms": p50, "p99_ms": 2 * p50, "server_cpu_ms": 5.0, "client_cpu_ms": 1.0}
            for route, name in (("/recommend", "recommend"), ("/also_bought", "also_bought"))
            for c, rate, rps, p50 in ((1, None, 160.0, 5.0), (8, None, 300.0, 40.0),
                                      (None, 300.0, 290.0, 20.0))]
    return {"settings": {}, "results": {"http": http, "in_process": {
        "recommend": {"cpu_ms": 3.0}, "also_bought": {"cpu_ms": 0.4}}}}


def write(part: str, payload: dict[str, Any]) -> None:
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (common.RESULTS_DIR / f"{part}.json").write_text(json.dumps(payload))


def test_every_picture_is_a_png_and_a_missing_part_is_skipped(
        capsys: pytest.CaptureFixture[str]) -> None:
    write("quality", quality())
    write("index", index())
    write("serve", serve())      # no merch.json: its picture is skipped
    common.update_markdown("quality", "summary table\n\n### Toys\n\nits table")
    common.update_markdown("serve", "tables\n\n![latency](results/serve-latency.png)")

    assert plots.main([]) == 0
    out = capsys.readouterr().out
    for name in ("quality.png", "index-recall-qps.png", "serve-latency.png"):
        path = common.RESULTS_DIR / name
        assert path.read_bytes()[:8] == PNG, name
        assert f"wrote results/{name}" in out
    assert not (common.RESULTS_DIR / "merch-diversity.png").exists()
    assert "skip merch-diversity.png: no results/merch.json (make bench-merch)" in out

    md = common.BENCH_MD.read_text()
    quality_md = common.current_section("quality")
    assert quality_md is not None
    link = quality_md.index("(results/quality.png)")   # before the first subsection
    assert quality_md.index("summary table") < link < quality_md.index("### Toys")
    assert md.count("serve-latency.png") == 1   # serving links its own picture
    assert md.count("(results/index-recall-qps.png)") == 1   # in the slot update_markdown made

    plots.main([])   # a second run changes nothing in BENCHMARKS.md
    assert common.BENCH_MD.read_text() == md


def test_publish_draws_and_links_the_parts_pictures() -> None:
    payload = index()
    out = common.publish("index", command="python -m benchmarks.index", results=payload[
        "results"], settings=payload["settings"], markdown="notes\n\n### Trained\n\ntable",
        mlflow_log=False)
    assert out == common.RESULTS_DIR / "index.json"
    assert (common.RESULTS_DIR / "index-recall-qps.png").read_bytes()[:8] == PNG
    section = common.current_section("index")
    assert section is not None
    assert section.index("notes") < section.index("(results/index-recall-qps.png)") < \
        section.index("### Trained")


def test_results_without_a_served_model_still_draw(tmp_path: Path) -> None:
    payload = quality()
    payload["results"]["runs"][1].pop("served")
    fig = plots.quality_plot(payload, tmp_path / "q.png")
    assert (tmp_path / "q.png").read_bytes()[:8] == PNG
    assert len(fig.axes) == 2    # one panel per data set: no served column
