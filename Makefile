# One entry point for the common jobs. Every target creates the virtual environment first when needed.
#   make demo   set up, then train + evaluate on the offline synthetic world (the main job, CPU, < 10 min)
#   make test   set up, then run the test suite (the tests marked slow left out)
#   make test-slow  set up, then run only the tests marked slow (longer versions of default tests)
#   make lint   ruff check + format check
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test test-slow lint benchmark clean-venv

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-export.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) train.py --config configs/synthetic.yaml

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

benchmark: venv
	$(PY) -m utils.tools.benchmark --config configs/locate_dino-vits16_agd20k-seen.yaml --device cpu

clean-venv:
	rm -rf $(VENV)
