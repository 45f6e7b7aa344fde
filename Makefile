# townhall: `make serve` runs it with embedded defaults; `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-fast lint deps-system bench clean

$(STAMP): pyproject.toml package.json
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e . --group test --group lint 2>/dev/null || \
	  $(BIN)/pip install -q -e . pytest pytest-asyncio httpx playwright websockets ruff mypy
	npm install --no-audit --no-fund --silent
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/townhall serve

# Debian packages the tests use as real peers (root on Debian; CI runs this).
deps-system:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	  chromium chromium-driver ffmpeg redis-server nginx icecast2 wrk sox espeak-ng fonts-noto-color-emoji
	command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm

test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/mypy src/townhall
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy src/townhall

bench: $(STAMP)
	$(BIN)/townhall bench fanout

clean:
	rm -rf $(VENV) node_modules
