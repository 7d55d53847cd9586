# Two commands: `make demo` and `make test`. Each uses python3 as it is when it already holds torch, torchvision,
# scikit-learn, matplotlib, tqdm and pytest (GPU machines often do, without internet; PYTHON=... names another
# interpreter), and otherwise creates .venv from requirements.txt on first use.
# `make gpu-check [PART="scripts ring ..."] [OUT=dir]`: the CUDA checks and measurements (scripts/gpu_check).
# `make study [STAGES="grafting plus"]`: every claim in miniature on digits over seeds (scripts/study/run.sh).
VENV := .venv
STAMP := $(VENV)/.installed
PYTHON ?= $(shell python3 -c "import torch, torchvision, sklearn, matplotlib, tqdm, pytest" 2>/dev/null && command -v python3)
ifeq ($(PYTHON),)
PY := $(CURDIR)/$(VENV)/bin/python
SETUP := $(STAMP)
else
PY := $(PYTHON)
SETUP :=
endif
# An interpreter of the system has no editable install of the package: the scripts find it on the path.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
PART ?= all

.PHONY: demo test study install gpu-check

install: $(SETUP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

demo: $(SETUP)
	PYTHON=$(PY) bash scripts/demo.sh

# Two test processes with pytest-xdist; one without it.
test: $(SETUP)
	$(PY) -m pytest -q $$($(PY) -c "import xdist" 2>/dev/null && printf '%s' '-n 2 --dist loadfile') tests

gpu-check: $(SETUP)
	$(PY) scripts/gpu_check --part $(PART) $(if $(OUT),--out $(OUT))

study: $(SETUP)
	PYTHON=$(PY) bash scripts/study/run.sh $(STAGES)
