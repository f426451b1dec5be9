# Loom: `make run` and `make test` do all setup on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
ACTIVITY ?= echo
INPUT   ?= {"hello": "world"}

.PHONY: run test test-fast bench activities js-toolchain sandbox upload emulators \
	emulators-install lint clean simulate chaos chaos-sandbox cluster serve studio browser-install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# C (ziglang), Python (componentize-py, from the dev extra) and JavaScript samples
# (componentize-js, npm, into activities/.js-toolchain); up-to-date ones are skipped.
JS_TOOLCHAIN := activities/.js-toolchain
JS_STAMP     := $(JS_TOOLCHAIN)/.installed
activities: $(STAMP) $(JS_STAMP)
	$(BIN)/python activities/build.py

$(JS_STAMP): activities/sdk/js/package.json
	mkdir -p $(JS_TOOLCHAIN)
	cp activities/sdk/js/package.json $(JS_TOOLCHAIN)/package.json
	cd $(JS_TOOLCHAIN) && npm install --no-audit --no-fund --loglevel=error --prefer-offline
	touch $(JS_STAMP)

js-toolchain: $(JS_STAMP)

run: activities
	$(BIN)/python -m runtime.demo

emulators-install:
	bash tests/emulators/install.sh

test: activities emulators-install browser-install
	$(BIN)/python -m schemas.export --check
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not integration and not system"

# The durable core under simulated faults (tests/test_simulation.py); `make test` runs 2,000
# seeds. SEEDS=N runs N seeds from FIRST (default 0); SEED=n replays one seed.
SEEDS ?= 20000
FIRST ?= 0
simulate: $(STAMP)
	LOOM_SIM_SEEDS=$(SEEDS) LOOM_SIM_FIRST=$(FIRST) LOOM_SIM_SEED=$(SEED) \
		$(BIN)/pytest -q -p no:cacheprovider tests/test_simulation.py -k seeds

bench: activities emulators-install
	$(BIN)/pip install -q --disable-pip-version-check -e '.[bench]'
	$(BIN)/python benchmarks/bench_executor.py
	$(BIN)/python benchmarks/bench_actors.py
	$(BIN)/python benchmarks/bench_cluster.py
	$(BIN)/python benchmarks/bench_service.py

# A fleet under faults (tests/test_chaos_fleet.py); `make test` runs a short version.
TRIALS ?= 200
chaos: activities emulators-install
	LOOM_CHAOS_TRIALS=$(TRIALS) $(BIN)/pytest -q -p no:cacheprovider -s tests/test_chaos_fleet.py

# 500 trapping WASI runs in fresh processes: no exit panic, no abort (40 in `make test`).
chaos-sandbox: activities
	LOOM_CHAOS_RUNS=500 $(BIN)/pytest -q -p no:cacheprovider tests/test_sandbox_panics.py

# redis-server, three workers on the embedded profile and a small load; Ctrl-C stops all.
cluster: activities emulators-install
	$(BIN)/python -m runtime.demo.cluster

sandbox: activities
	$(BIN)/loom sandbox activities/build/$(ACTIVITY).wasm \
		--manifest activities/build/$(ACTIVITY).manifest.json --input '$(INPUT)'

upload: $(STAMP)
	@test -n "$(WASM)" -a -n "$(MANIFEST)" || { echo "usage: make upload WASM=x.wasm MANIFEST=x.json"; exit 2; }
	$(BIN)/loom activity upload $(WASM) --manifest $(MANIFEST)

emulators: $(STAMP) emulators-install
	$(BIN)/python tests/servers.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy runtime wdl schemas

# Debian's chromium for the Studio's Playwright tests (Playwright's own browser download is
# not used); skipped when present.
browser-install:
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# The HTTP API, the Studio and /metrics on 127.0.0.1:8080 (MODULE= adds actors).
serve: activities
	$(BIN)/loom serve $(if $(MODULE),--module $(MODULE))

# A demo server with data in it; prints the Studio's URL and a key.
studio: activities
	$(BIN)/python -m runtime.service.demo

clean:
	rm -rf .loom activities/build activities/.js-toolchain .pytest_cache .mypy_cache .ruff_cache
