# Two commands: `make demo` and `make test`. Each creates .venv from requirements.txt on first use.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install

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
