# Two commands: `make demo` and `make test`. Each creates .venv from requirements.txt on first use.
# `make study [STAGES="grafting plus"]`: the study on digits (scripts/study/run.sh; about 90 min on 2 cores).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test study install

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	PYTHON=$(abspath $(PY)) bash scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

study: $(STAMP)
	PYTHON=$(abspath $(PY)) bash scripts/study/run.sh $(STAGES)
