# townhall: `make serve` runs it with embedded defaults; `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The runtime alone for `make serve`; the test and lint tools on top for the rest.
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: serve test test-fast lint deps-system deps-bench bench clean

$(RUNTIME): pyproject.toml package.json
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	npm install --no-audit --no-fund --silent
	touch $(RUNTIME)

# pip 25.1 or later reads dependency groups; the upgrade above brings it.
$(DEV): $(RUNTIME)
	$(BIN)/pip install -q -e '.[cluster]' --group test --group lint
	touch $(DEV)

serve: $(RUNTIME)
	$(BIN)/townhall serve

# What `make test` needs from Debian, and nothing more (root; CI runs this): Chromium and
# an emoji font for the browser test and its screenshots, ffmpeg as a real player, npm
# for hls.js, Varnish and nginx as the caches in front of the edges, python3-venv for
# the virtualenv. (The NATS server comes from the cluster extra's wheel.)
deps-system:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	  python3-venv chromium ffmpeg fonts-noto-color-emoji varnish nginx
	command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm

# The servers and client the benchmarks measure townhall against (root).
deps-bench:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	  icecast2 nginx wrk util-linux

test: $(DEV)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src/townhall benchmarks
	$(BIN)/pytest -q

test-fast: $(DEV)
	$(BIN)/pytest -q tests/unit

lint: $(DEV)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src/townhall benchmarks

# Run from the repository root: the benchmarks are not part of the installed package.
bench: $(RUNTIME)
	$(BIN)/python -m benchmarks fanout

clean:
	rm -rf $(VENV) node_modules
