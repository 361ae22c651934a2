# `make run`: set up .venv and run the main job.  `make test`: set up .venv and run the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
READY := $(VENV)/.metakit-installed

.PHONY: run test install clean

QUICK := --iterations 2000 --force --quiet
run: $(READY)
	$(VENV)/bin/metakit train --method maml $(QUICK) --out runs/quickstart/maml
	$(VENV)/bin/metakit train --method enhanced $(QUICK) --out runs/quickstart/enhanced
	$(VENV)/bin/metakit eval runs/quickstart/maml --shots 5,10 --steps 0,1,10
	$(VENV)/bin/metakit eval runs/quickstart/enhanced --shots 5,10 --steps 0,1,10

test: $(READY)
	$(VENV)/bin/ruff check metakit tests examples tools
	$(PY) -m pytest

install: $(READY)

# learn2learn 0.2.0 must be built from its sdist with Cython 3 before pip resolves metakit.
$(READY): setup.cfg pyproject.toml tools/install_learn2learn.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch>=2.1,<=2.14.1" "torchvision>=0.16,<=0.29.1" "cython>=3" setuptools wheel numpy
	bash tools/install_learn2learn.sh $(PY)
	$(PY) -m pip install --quiet -e ".[dev,rl]"
	touch $(READY)

clean:
	rm -rf $(VENV) build *.egg-info
