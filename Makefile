# advbias: the two commands a new user needs are `make demo` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
ADVBIAS := $(VENV)/bin/advbias
STAMP   := $(VENV)/.installed
export GIT_PYTHON_REFRESH := quiet
export PYTHONUNBUFFERED := 1

DEMO_DIR  ?= instance/demo
DEMO_PORT ?= 5000

.PHONY: install demo test bench loadtest clean

## install: create .venv once (torch pinned, from the local wheel cache) and install advbias editable
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

## test: the whole test suite
test: install
	$(PY) -m pytest -q

## bench: attack-engine benchmark (foolbox vs batched engine vs forward+backward floor)
bench: install
	$(ADVBIAS) bench attack

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
