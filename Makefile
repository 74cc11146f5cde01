# bevkd: the two set-up commands of the README.
#   make demo  - install into .venv and run the main job on the embedded default
#   make test  - install into .venv and run the test suite
#   make lint  - ruff and mypy with the settings in pyproject.toml (.ci/run runs it before the tests)
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, so no CUDA build is ever pulled in
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/bevkd demo

test: install
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check storage teachers student pipeline tests bench
	$(VENV)/bin/mypy storage teachers student pipeline

clean:
	rm -rf $(VENV) build *.egg-info
