# Every target creates .venv on first use; only Python 3.11 and make are needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# Run in this order by `make bench`; each prints its tables (add new scripts here).
BENCH_SCRIPTS := benchmarks/http_bench.py benchmarks/scale_bench.py benchmarks/fanout_bench.py \
                 benchmarks/memory_bench.py

.PHONY: demo test lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.py requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/flask --app examples/orders/app.py run --host 127.0.0.1 --port 5000

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

$(BENCH_STAMP): $(STAMP) benchmarks/requirements.txt
	$(BIN)/pip install --quiet -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@command -v wrk >/dev/null || { echo "== wrk (HTTP load generator) is missing: apt-get install wrk"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk; }
	@set -e; for script in $(BENCH_SCRIPTS); do \
		echo "== $$script"; $(BIN)/python $$script; echo; \
	done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
