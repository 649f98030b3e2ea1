# Tailor — every target installs what it needs first (see `make help`).
SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

# Public interface (README): DATA, MODEL, K, OUT, USERS, EXCLUDE_SEEN, PORT, NPROC, EPOCHS, SEGMENT.
DATA ?= synthetic
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install install-bench test test-fast lint prepare demo clean-cache

help: ## list targets and their variables
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  make %-16s %s\n", $$1, $$2}'

# The CPU build of torch: PyPI's torch is the CUDA build (gigabytes), so the lock's
# torch==2.13.0+cpu comes from pip's find-links (a local wheel folder) or from TORCH_INDEX_URL,
# passed to pip as an extra index (e.g. https://download.pytorch.org/whl/cpu). The lock's hashes
# pin every file, so an extra index can only supply the very same wheels.
TORCH_INDEX_URL ?=
PIP_INDEX = $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))
PIP_INSTALL = $(PY) -m pip install --quiet --disable-pip-version-check

# Re-runs only when a lock or the project metadata change, so a second `make install` does nothing.
$(STAMP): requirements.lock requirements-nodeps.lock pyproject.toml
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PIP_INSTALL) --require-hashes $(PIP_INDEX) -r requirements.lock
	# torchrec without its dependencies (its fbgemm-gpu is the CUDA build): requirements-nodeps.in
	$(PIP_INSTALL) --require-hashes --no-deps -r requirements-nodeps.lock
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	$(PY) -c "import torchrec, faiss, mlflow, bentoml, pandas"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the pinned environment (idempotent; TORCH_INDEX_URL)

# Benchmark and test extras (ALS from `implicit`, the py-spy profiler, schemathesis for the
# fuzz test); the tests cover them too.
$(BENCH_STAMP): $(STAMP) requirements-bench.lock
	$(PIP_INSTALL) --require-hashes -r requirements-bench.lock
	@touch $(BENCH_STAMP)

install-bench: $(BENCH_STAMP) ## install the benchmark extras (implicit, py-spy) into .venv

# The locks, from the requirements*.in files: every package with its version and sha256 hashes.
# pip-compile keeps the versions a lock already has (upgrade one: ARGS="--upgrade-package NAME")
# and runs from a venv of its own, so pip-tools' own dependencies never join .venv. It always
# follows dependencies, so requirements-nodeps.lock (torchrec alone) is hashed from pip download.
LOCK_VENV := .cache/lock-venv
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet \
	--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	--no-emit-trusted-host $(PIP_INDEX) $(ARGS)
.PHONY: lock
lock: ## regenerate the hashed locks from requirements*.in (versions kept; TORCH_INDEX_URL, ARGS)
	@test -x $(LOCK_VENV)/bin/pip-compile || { rm -rf $(LOCK_VENV) && $(PYTHON_SYS) -m venv $(LOCK_VENV) \
		&& $(LOCK_VENV)/bin/pip install --quiet --disable-pip-version-check pip-tools==7.6.2; }
	$(PIP_COMPILE) --output-file requirements.lock requirements.in
	$(PIP_COMPILE) --output-file requirements-bench.lock requirements-bench.in
	@rm -rf $(LOCK_VENV)/nodeps && $(LOCK_VENV)/bin/pip download --quiet --disable-pip-version-check \
		--no-deps --only-binary :all: --dest $(LOCK_VENV)/nodeps -r requirements-nodeps.in
	@{ echo "# Written by make lock from requirements-nodeps.in (see there); install with --no-deps."; \
		for whl in $(LOCK_VENV)/nodeps/*.whl; do \
			echo "$$(basename $$whl | cut -d- -f1-2 | sed 's/-/==/') \\"; \
			echo "    --hash=sha256:$$(sha256sum $$whl | cut -d' ' -f1)"; \
		done; } > requirements-nodeps.lock

lint: $(STAMP) ## ruff, and the import-linter contracts (layers point down; pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

test: $(BENCH_STAMP) install-browser lint ## lint, then every test (slow ones included; installs Debian's chromium for the MLflow page check)
	$(PY) -m pytest -q $(ARGS)

test-fast: $(BENCH_STAMP) ## the fast tests only
	$(PY) -m pytest -q -m "not slow" $(ARGS)

prepare: $(STAMP) ## read, validate and featurize DATA; print a summary (DATA=spec, ARGS=extra flags)
	@$(BIN)/tailor-prepare --data "$(DATA)" $(ARGS)

# NPROC > 1: one process per rank under torchrun (rank 0 prints, logs and saves; fit shards the
# tables with TorchRec DMP), each rank `python -m training.train`. tailor-torchrun
# (training.distributed) is torchrun minus its traceback on a failed rank.
TRAIN_RUN = $(if $(filter-out 0 1,$(NPROC)),$(BIN)/tailor-torchrun --standalone --nproc_per_node=$(NPROC) -m training.train,$(BIN)/tailor-train)
.PHONY: train
train: $(STAMP) ## train on DATA, compare with baselines, log + register in MLflow (EPOCHS, NPROC, ARGS=--help)
	@$(TRAIN_RUN) --data "$(DATA)" $(if $(EPOCHS),--epochs $(EPOCHS)) $(ARGS)

clean-cache: ## delete the processed-data cache (.cache/tailor)
	rm -rf .cache/tailor

# MLflow UI over the local store (training/tracking.py); PORT on the command line overrides 5000
# without taking over another target's PORT default.
MLFLOW_PORT = $(if $(filter command line environment,$(origin PORT)),$(PORT),5000)
# The project's store unless MLFLOW_TRACKING_URI names another (as training/tracking.py reads it).
MLFLOW_STORE = $(or $(MLFLOW_TRACKING_URI),sqlite:///$(CURDIR)/mlflow/mlflow.db)
.PHONY: mlflow-ui mlflow-screenshot install-browser
mlflow-ui: $(STAMP) ## browse runs, metrics and registered models at 127.0.0.1 (PORT=5000)
	@mkdir -p mlflow/artifacts
	$(BIN)/mlflow ui --backend-store-uri "$(MLFLOW_STORE)" \
		--default-artifact-root "$(CURDIR)/mlflow/artifacts" \
		--artifacts-destination "$(CURDIR)/mlflow/artifacts" \
		--host 127.0.0.1 --port $(MLFLOW_PORT)

# Debian's Chromium, for the MLflow compare-page check (tests and mlflow-screenshot); Playwright
# drives it and never downloads a browser of its own.
install-browser: ## install Debian's chromium if missing (apt-get; as root, as CI runs)
	@command -v chromium >/dev/null 2>&1 || { apt-get install -y --no-install-recommends chromium \
		|| { apt-get update && apt-get install -y --no-install-recommends chromium; }; }

mlflow-screenshot: $(BENCH_STAMP) install-browser ## two tiny runs, their MLflow compare page in Chromium -> docs/mlflow-compare.png
	@$(PY) -m benchmarks.mlflow_compare $(ARGS)

# Serving. MODEL: an alias of the registered model (champion, candidate), a version number, an
# MLflow run id or a bundle folder. PORT on the command line overrides 3000 (as for mlflow-ui).
# TAILOR_SERVE_HOST: the service answers requests whose Host is HOST (serving/guard.py).
MODEL ?= champion
K ?= 50
OUT ?= recs.csv
SERVE_PORT = $(if $(filter command line environment,$(origin PORT)),$(PORT),3000)
.PHONY: serve api-key recommend-batch segments campaign forget export-events experiment-report simulate
HOST ?= 127.0.0.1
serve: $(STAMP) ## serve MODEL (default champion) with BentoML at HOST:PORT (127.0.0.1:3000; another HOST needs API keys)
	$(BIN)/tailor-serve --model "$(MODEL)" --host "$(HOST)" --port $(SERVE_PORT) $(ARGS)

# A Bento (serving/bento.py, bentofile.yaml): MODEL's bundle in BentoML's model store and the
# service that serves it, for `bentoml serve tailor:latest`, a container or BentoCloud.
# BENTOML_HOME (default ~/bentoml) is the store. BENTO: which Bento to containerize.
BENTO ?= tailor:latest
.PHONY: bento containerize
bento: $(STAMP) ## MODEL (default champion) into BentoML's model store + `bentoml build`: the Bento tailor:<version> (ARGS=--help)
	@$(BIN)/tailor-bento --model "$(MODEL)" $(ARGS)

containerize: $(STAMP) ## OCI image of BENTO (default tailor:latest) by `bentoml containerize`; needs Docker or ARGS="--backend podman"
	$(BIN)/bentoml containerize "$(BENTO)" $(ARGS)

api-key: $(STAMP) ## make an API key: NAME=who ROLE=read|write|admin (printed once; its hash goes to api_keys.toml)
	@$(BIN)/tailor-api-key new --name "$(NAME)" --role "$(ROLE)" $(ARGS)

recommend-batch: $(STAMP) ## top-K items for every shopper in DATA (or USERS) by MODEL -> OUT (EXCLUDE_SEEN=1, DIVERSITY, RULES)
	@$(BIN)/tailor-recommend-batch --data "$(DATA)" --model "$(MODEL)" --k "$(K)" --out "$(OUT)" \
		$(if $(USERS),--users "$(USERS)") \
		$(if $(DIVERSITY),--diversity "$(DIVERSITY)") $(if $(RULES),--rules "$(RULES)") \
		$(if $(filter 1 yes true,$(EXCLUDE_SEEN)),--exclude-seen) $(ARGS)

# USER is also the login name in the environment: only a USER given on the command line counts.
USER_ID = $(if $(filter command line,$(origin USER)),$(USER))
forget: $(STAMP) ## forget shopper USER: delete their events, audit it; serving and training leave them out
	@test -n "$(USER_ID)" || { echo "error: name the shopper: make forget USER=<user id>" >&2; exit 2; }
	@$(BIN)/tailor-store forget --user "$(USER_ID)" $(ARGS)

export-events: $(STAMP) ## every event the shop posted (the event store) -> OUT (Parquet, default events.parquet)
	@$(BIN)/tailor-store export --out "$(if $(filter command line environment,$(origin OUT)),$(OUT),events.parquet)" $(ARGS)

experiment-report: $(STAMP) ## per-variant CTR, cart rate, conversion, revenue with 95% CIs and lift vs control for EXPERIMENT; logged to MLflow
	@test -n "$(EXPERIMENT)" || { echo "error: name the experiment: make experiment-report EXPERIMENT=<name>" >&2; exit 2; }
	@$(BIN)/tailor-experiment-report --experiment "$(EXPERIMENT)" $(if $(filter command line environment,$(origin MODEL)),--model "$(MODEL)") $(ARGS)

simulate: $(STAMP) ## the embedded shop's shoppers against a server in a control/popular/model experiment, then its report (MODEL: one trained on it)
	@case "$(if $(filter command line environment,$(origin DATA)),$(DATA),synthetic)" in synthetic*) ;; \
		*) echo "error: the simulation needs the embedded shop's hidden tastes: DATA=synthetic" >&2; exit 2;; esac
	@$(BIN)/tailor-simulate $(if $(filter command line environment,$(origin MODEL)),--model "$(MODEL)") $(ARGS)

segments: $(STAMP) ## every shopper's segments (segments.toml + learned) by MODEL -> OUT folder, logged to MLflow
	@$(BIN)/tailor-segments --model "$(MODEL)" \
		--out "$(if $(filter command line environment,$(origin OUT)),$(OUT),segments)" $(ARGS)

campaign: $(STAMP) ## top-K items (with reasons) for every shopper of SEGMENT by MODEL -> OUT folder (Parquet + CSV; RULES)
	@$(BIN)/tailor-campaign --model "$(MODEL)" --segment "$(SEGMENT)" $(if $(RULES),--merch-rules "$(RULES)") \
		--k "$(if $(filter command line environment,$(origin K)),$(K),10)" \
		--out "$(if $(filter command line environment,$(origin OUT)),$(OUT),campaign)" $(ARGS)

# Trains unless MODEL is given on the command line (then serves that model).
demo: $(STAMP) ## train a small model on the embedded shop, serve it, send example requests (PORT)
	@$(BIN)/tailor-demo --port $(SERVE_PORT) \
		$(if $(filter command line,$(origin MODEL)),--model "$(MODEL)") $(ARGS)

# Benchmarks (BENCHMARKS.md, benchmarks/results/*.json, MLflow experiment tailor-benchmarks).
# Each part runs on its own; ARGS passes flags to it (ARGS=--help lists them). The benchmarks are
# not part of the installed package (no console commands): they run from the checkout.
.PHONY: bench bench-quality bench-cold bench-merch bench-events bench-train bench-train-step \
	bench-index bench-serve \
	bench-campaign bench-large bench-soak bench-plots
bench: ## every benchmark part: quality, new items, training, index, serving (over an hour on 2 cores)
	$(MAKE) --no-print-directory bench-quality
	$(MAKE) --no-print-directory bench-cold
	$(MAKE) --no-print-directory bench-merch
	$(MAKE) --no-print-directory bench-train
	$(MAKE) --no-print-directory bench-train-step
	$(MAKE) --no-print-directory bench-index
	$(MAKE) --no-print-directory bench-serve
	$(MAKE) --no-print-directory bench-large
	$(MAKE) --no-print-directory bench-soak
	$(MAKE) --no-print-directory bench-events
	$(MAKE) --no-print-directory bench-campaign
	$(MAKE) --no-print-directory bench-plots

# Each part draws its own pictures as it publishes; this redraws all from the results there are.
bench-plots: $(STAMP) ## redraw every picture of BENCHMARKS.md from benchmarks/results/*.json
	@$(PY) -m benchmarks.plots $(ARGS)

bench-quality: $(BENCH_STAMP) ## two-tower stack vs every baseline + ALS on every data set
	@$(PY) -m benchmarks.quality $(ARGS)

bench-cold: $(BENCH_STAMP) ## new items placed by their attributes alone: 10% of Toys/Sports items held out
	@$(PY) -m benchmarks.cold_items $(ARGS)

bench-merch: $(BENCH_STAMP) ## diversity vs NDCG, cart completion vs also-bought, explanation cost (Toys, Tmall, embedded shop)
	@$(PY) -m benchmarks.merchandising $(ARGS)

bench-events: $(BENCH_STAMP) ## POST /events events/s at batch sizes 1/10/100 on SQLite and PostgreSQL; /recommend with the store
	@$(PY) -m benchmarks.ingest $(ARGS)

bench-large: $(BENCH_STAMP) ## full scoring vs two-stage ranking: NDCG@10 on served hold-outs, latency up to 1M items
	@$(PY) -m benchmarks.large_catalog $(ARGS)

bench-soak: $(BENCH_STAMP) ## a real server 10 minutes at 70% of its capacity: errors, p99 drift, worker memory growth
	@$(PY) -m benchmarks.soak $(ARGS)

bench-campaign: $(BENCH_STAMP) ## make campaign's time and peak memory: every Sports shopper; 1M resampled shoppers
	@$(PY) -m benchmarks.campaign $(ARGS)

bench-train: $(BENCH_STAMP) ## training wall time, examples/s, peak memory: 1 process vs NPROC=2
	@$(PY) -m benchmarks.train $(ARGS)

bench-train-step: $(BENCH_STAMP) ## one training step: bfloat16 logits + fused AdamW vs float32 + AdamW, side by side
	@$(PY) -m benchmarks.train_step $(ARGS)

bench-index: $(BENCH_STAMP) ## Flat / HNSW / IVF: build time, memory, recall@10, QPS (1M items)
	@$(PY) -m benchmarks.index $(ARGS)

bench-serve: $(BENCH_STAMP) ## a real `make serve` under load: req/s and p50/p95/p99 latency
	@$(PY) -m benchmarks.serve $(ARGS)
