"""`make bento`, `bentoml serve tailor:latest`, `make containerize` and the README's Python
client: the real commands on the session's tiny bundle, in a temporary BentoML home."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import BaseModel

from features.event_store import URL_ENV
from features.infra import TailorError, run_cli
from serving import bento
from serving.api import ItemRequest, RecommendRequest
from serving.engine import Engine, load_engine
from serving.merchandise import rules_path
from serving.process import Server, free_port, served
from serving.recommend import also_bought, recommend

ROOT = Path(__file__).resolve().parents[2]
# `make bento` for real, its install step taken as done (-o): the tests run inside that install.
MAKE = ["make", "--no-print-directory", "-o", ".venv/.installed"]
README_URL = "http://127.0.0.1:3000"


# --- fixtures: one Bento and one server for the module ----------------------------------------

@pytest.fixture(scope="module")
def bento_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A BentoML home of the module's own (never ~/bentoml); every command started inherits it."""
    home = tmp_path_factory.mktemp("bentoml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", str(home))
        mp.setenv("BENTOML_DO_NOT_TRACK", "true")
        mp.delenv(bento.BENTO_MODEL_ENV, raising=False)
        yield home


@pytest.fixture(scope="module")
def built(bento_home: Path, bundle_dir: Path) -> dict:
    """``make bento MODEL=<the tiny bundle>``: its output and the Bento's folder."""
    done = subprocess.run([*MAKE, "bento", f"MODEL={bundle_dir}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"^bento\s+(tailor):(\S+):", done.stdout, re.M)
    assert found, done.stdout
    model = re.search(r"^model\s+.*: (tailor:\S+) \(imported", done.stdout, re.M)
    assert model, done.stdout
    return {"stdout": done.stdout, "tag": f"{found[1]}:{found[2]}", "model": model[1],
            "path": bento_home / "bentos" / found[1] / found[2]}


@pytest.fixture(scope="module")
def bento_server(built: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``bentoml serve tailor:latest`` (no TAILOR_MODEL: the Bento decides), one worker, with an
    event store of its own: every answer's impression goes there, and the ones of other test
    servers must not demote items here."""
    work = tmp_path_factory.mktemp("bento-serve")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(URL_ENV, f"sqlite:///{work / 'events.db'}")
        mp.setenv("TAILOR_WORKERS", "1")   # one worker is enough on a shared machine
        mp.delenv("TAILOR_MODEL", raising=False)
        with served(None, free_port(), work / "server.log", service="tailor:latest") as server:
            yield server


@pytest.fixture(scope="module")
def local(bundle_dir: Path) -> Engine:
    """The same bundle in this process, with the rules file the service reads (the Bento holds
    a copy of it)."""
    return load_engine(str(bundle_dir), rules=rules_path())


def same_answer(served_answer: dict, expected: BaseModel) -> None:
    """The HTTP answer is the in-process one: strategy, items, order, sources and reasons;
    numbers to float precision (the server scores on one thread, this process on several)."""
    want = expected.model_dump(mode="json")
    assert served_answer["strategy"] == want["strategy"]

    def exact(answer: dict) -> list[tuple]:
        return [(i["item_id"], i["source"], *[(i["because"] or {}).get(key) for key in
                                              ("kind", "item_id", "event", "rule")])
                for i in answer["items"]]

    def numbers(answer: dict) -> list[float | None]:
        return [x for i in answer["items"]
                for x in (i["score"], (i["because"] or {}).get("score_drop"))]

    assert exact(served_answer) == exact(want)
    got, expected_numbers = numbers(served_answer), numbers(want)
    assert [x is None for x in got] == [x is None for x in expected_numbers]
    assert [x for x in got if x is not None] == \
        pytest.approx([x for x in expected_numbers if x is not None], rel=1e-5)


# --- make bento ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_make_bento_packs_the_bundle_the_code_and_a_cpu_image(built: dict, bundle_dir: Path,
                                                              bento_home: Path) -> None:
    info = yaml.safe_load((built["path"] / "bento.yaml").read_text())
    assert [m["tag"] for s in info["services"] for m in s["models"]] == [built["model"]]
    # the bundle, unchanged, under its content-addressed tag with the training run's labels
    model_dir = bento_home / "models" / "tailor" / built["model"].split(":")[1]
    for name in ("bundle.json", "model.pt", "index.faiss", "histories.parquet"):
        assert (model_dir / name).read_bytes() == (bundle_dir / name).read_bytes()
    bundle_info = yaml.safe_load((bundle_dir / "bundle.json").read_text())   # JSON is YAML
    model_info = yaml.safe_load((model_dir / "model.yaml").read_text())
    assert model_info["labels"] == {"registered_version": "none",
                                    "data_hash": bundle_info["data"]["data_hash"],
                                    "git_commit": bundle_info["git"]["commit"]}
    assert built["model"] == bento.model_tag(None, bento.bundle_digest(bundle_dir))
    assert info["labels"]["model"] == built["model"]
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", info["labels"]["code_commit"])
    # the code serving imports, and nothing of training, tests, stores or keys
    src = built["path"] / "src"
    assert (src / "serving" / "service.py").is_file() and (src / "rules.toml").is_file()
    assert not any((src / name).exists() for name in
                   ("training", "tests", "benchmarks", "mlflow", "events", "api_keys.toml"))
    # the image: the lock with torch from the CPU index, then torchrec --no-deps
    requirements = (built["path"] / "env" / "python" / "requirements.txt").read_text()
    lines = requirements.splitlines()
    assert lines[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    # the hashed lock as it is (each pin followed by its hashes)
    assert {"torch==2.13.0+cpu", "fbgemm-gpu-cpu==1.8.0", "bentoml==1.4.39"} <= \
        set(requirements.split())
    assert "--hash=sha256:" in requirements
    assert not any(line.startswith("torchrec") for line in lines)
    dockerfile = (built["path"] / "env" / "docker" / "Dockerfile").read_text()
    install = dockerfile.index("pip install -r $BENTO_PATH/env/python/requirements.txt")
    script = re.search(r"&& (\./env/docker/script__\w+)", dockerfile)
    assert script and dockerfile.index(script[0]) > install
    assert "--no-deps torchrec==1.8.0" in (built["path"] / script[1]).read_text()
    assert "ENV UV_INDEX_STRATEGY=" in dockerfile.split(script[0])[0]


@pytest.mark.slow
def test_the_same_bundle_is_imported_once(built: dict, bundle_dir: Path) -> None:
    again = subprocess.run(
        [sys.executable, "-c", "import sys; from serving.bento import import_bundle; "
         "model, created = import_bundle(sys.argv[1]); print(model.tag, created)",
         str(bundle_dir)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == [built["model"], "False"]


# --- bentoml serve tailor:latest ----------------------------------------------------------------

@pytest.mark.slow
def test_the_bento_answers_as_the_engine_does(bento_server: Server, built: dict, local: Engine,
                                              shop) -> None:
    _, truth = shop
    with httpx.Client(base_url=bento_server.url, timeout=30) as client:
        card = client.post("/model").json()
        # served from the Bento's model, named by its tag (not a host path, not TAILOR_MODEL)
        assert card["model_version"] == card["model_ref"] == built["model"]
        assert card["items"] == len(local.ids)
        known = sorted(local.known_users)
        item = str(local.ids[local.popular_rows[3]])
        requests = [  # each shopper once: repeated answers would start demoting (the ramen loop)
            {"user_id": known[1], "k": 8},
            {"user_id": known[2], "k": 5, "diversity": 0.3, "max_per_category": 2},
            {"user_id": "bento-visitor", "k": 5,
             "recent_events": [{"item_id": item, "event": "view"},
                               {"item_id": item, "event": "addtocart"}]},
            {"user_id": "bento-first-visit", "k": 4}]
        strategies = set()
        for body in requests:
            answer = client.post("/recommend", json=body)
            assert answer.status_code == 200, answer.text
            same_answer(answer.json(), recommend(local, RecommendRequest(**body)))
            strategies.add(answer.json()["strategy"])
        assert strategies == {"history:full_scoring", "session:full_scoring", "popular"}
        for body in ({"item_id": truth.printer_item, "k": 5}, {"item_id": item, "k": 7}):
            answer = client.post("/also_bought", json=body)
            assert answer.status_code == 200, answer.text
            same_answer(answer.json(), also_bought(local, ItemRequest(**body)))
        first = client.post("/also_bought", json={"item_id": truth.printer_item, "k": 5}).json()
        assert first["items"][0]["item_id"] == truth.printer_ink
        missing = client.post("/also_bought", json={"item_id": "no-such-item"})
        assert missing.status_code == 404 and "item_id" in missing.json()["detail"][0]["loc"]


# --- the README's Python client -------------------------------------------------------------------

def readme_client_example() -> str:
    """The README's Python client block (marked by a comment naming this test)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- python-client:[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert found, "README.md has no marked python-client block"
    return found[1]


@pytest.mark.slow
def test_readme_python_client_example_runs_against_the_bento(bento_server: Server,
                                                              local: Engine) -> None:
    code = readme_client_example()
    assert README_URL in code and "SyncHTTPClient" in code
    names: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.replace(README_URL, bento_server.url), "README.md", "exec"), names)
    same_answer(names["recommended"], recommend(local, RecommendRequest(user_id="u000345", k=5)))
    same_answer(names["also"], also_bought(local, ItemRequest(item_id="i001248", k=5)))
    assert names["recommended"]["strategy"] in printed.getvalue()
    assert names["also"]["items"][0]["item_id"] in printed.getvalue()


# --- make containerize ----------------------------------------------------------------------------

def container_engine() -> str | None:
    """Why no container engine is usable here, or None when Docker's daemon answers."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer in 30 s"
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no daemon"])[-1]
        return f"`docker info` found no running Docker daemon ({last})"
    return None


@pytest.mark.slow
def test_make_containerize_builds_an_image_of_the_bento(built: dict) -> None:
    """Needs a Docker daemon; the build then pulls the base image and the lock's wheels."""
    missing = container_engine()
    if missing:
        pytest.skip(f"make containerize needs a container engine: {missing}")
    done = subprocess.run([*MAKE, "containerize", f"BENTO={built['tag']}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the image is named after the Bento
    assert subprocess.run(["docker", "image", "inspect", built["tag"]],
                          capture_output=True).returncode == 0


# --- the commands' interface (fast) -------------------------------------------------------------

def test_make_help_lists_the_new_targets_and_their_recipes() -> None:
    shown = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60).stdout
    for target in ("bento", "containerize"):
        line = next((ln for ln in shown.splitlines() if ln.split()[1:2] == [target]), "")
        assert len(line.split(None, 2)) == 3, f"make help: no description for {target}"
    dry = subprocess.run([*MAKE, "-n", "bento", "MODEL=candidate", "ARGS=--version 7"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    assert "tailor-bento --model \"candidate\" --version 7" in dry
    dry = subprocess.run([*MAKE, "-n", "containerize"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60).stdout
    assert "bentoml containerize \"tailor:latest\"" in dry


def test_cli_help_explains_every_option() -> None:
    parser = bento.build_parser()
    for action in parser._actions:
        assert action.help and len(action.help) > 20, action.dest
    assert parser.description and "BENTOML_HOME" in parser.description


def test_a_model_that_does_not_resolve_is_one_line_and_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for ref in ("no-such-alias", str(tmp_path / "no" / "such" / "folder"), "42"):
        with pytest.raises(SystemExit) as exit_:
            run_cli(lambda ref=ref: bento.main(["--model", ref]))
        assert exit_.value.code == 2
        err = capsys.readouterr().err   # MLflow may log its store's creation before it
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: model '{ref}': "), err
        assert "Traceback" not in err
    with pytest.raises(TailorError, match="not a Tailor bundle"):
        bento.import_bundle(str(tmp_path))


def test_the_served_model_comes_from_the_env_then_the_bento_then_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(bento.BENTO_MODEL_ENV, raising=False)
    src = tmp_path / "src"   # a Bento: <bento>/src holds the code, <bento>/bento.yaml beside it
    src.mkdir()
    assert bento.bento_model_tag(src) is None   # a checkout: make serve's TAILOR_MODEL
    (tmp_path / "bento.yaml").write_text(yaml.safe_dump({
        "models": [], "services": [{"name": "tailor", "models": [
            {"tag": "other:v1"}, {"tag": "tailor:v3-0123456789ab"}]}]}))
    assert bento.bento_model_tag(src) == "tailor:v3-0123456789ab"
    monkeypatch.setenv(bento.BENTO_MODEL_ENV, "tailor:bundle-abc")
    assert bento.bento_model_tag(src) == "tailor:bundle-abc"


def test_model_tags_name_the_registered_version_and_the_content() -> None:
    digest = "0123456789abcdef" * 4
    assert bento.model_tag(3, digest) == "tailor:v3-0123456789ab"
    assert bento.model_tag(None, digest) == "tailor:bundle-0123456789ab"


def test_the_image_pins_what_make_install_pins() -> None:
    nodeps = (ROOT / "requirements-nodeps.lock").read_text()   # what make install installs
    script = (ROOT / "serving" / "bento_image.sh").read_text()
    assert re.findall(r"^(torchrec==\S+)", nodeps, re.M) == \
        re.findall(r"--no-deps (torchrec==\S+)", script)
    config = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert config["python"]["requirements_txt"] == "requirements.lock"
    assert config["python"]["extra_index_url"] == ["https://download.pytorch.org/whl/cpu"]
    assert config["python"]["lock_packages"] is False   # locking again would need the network
    lock = set((ROOT / "requirements.lock").read_text().split())
    assert {"torch==2.13.0+cpu", "fbgemm-gpu-cpu==1.8.0"} <= lock
