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
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77'
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

## demo: small stimulus set (resumed if present), the "demo" experiment on SQLite, a fresh admin password,
##       then the development server on http://127.0.0.1:$(DEMO_PORT); everything lives in $(DEMO_DIR)
demo: export ADVBIAS_INSTANCE_PATH := $(abspath $(DEMO_DIR))
demo: install
	$(ADVBIAS) stimuli generate --images builtin --pairs cat:truck --eps 2,4,8,16 --steps 10 --limit 8 \
	  --controls flip,noise --out $(DEMO_DIR)/set
	$(ADVBIAS) db upgrade
	$(ADVBIAS) experiment create --stimuli $(DEMO_DIR)/set --name demo --base-url http://127.0.0.1:$(DEMO_PORT)
	@$(ADVBIAS) admin set-password --generate
	@echo ""
	@echo "  Take part:  http://127.0.0.1:$(DEMO_PORT)/run/demo"
	@echo "  Admin:      http://127.0.0.1:$(DEMO_PORT)/admin/  (user admin, the password printed above)"
	@echo ""
	$(ADVBIAS) serve --host 127.0.0.1 --port $(DEMO_PORT)

## test: the whole test suite
test: install
	$(PY) -m pytest -q

## bench: attack-engine benchmarks: foolbox vs batched engine vs forward+backward floor (warm), and the
##        first call in a fresh process (cold); `advbias bench transfer` (hours on a CPU) is run by hand
bench: install
	$(ADVBIAS) bench attack
	$(ADVBIAS) bench cold --rounds 5

## loadtest: web-server load benchmark (not a test): LOAD_PARTICIPANTS simulated participants take the study at
##           once over HTTP against gunicorn, on SQLite (FULL, NORMAL) and PostgreSQL, paced (each participant
##           answering about once a second) and as fast as answered (saturation); see docs/benchmarks.md.
##           The burst benchmark: .venv/bin/python tests/loadtest.py --burst 150
LOAD_PARTICIPANTS ?= 500
LOADTEST_ARGS ?=
loadtest: install
	$(PY) tests/loadtest.py --participants $(LOAD_PARTICIPANTS) --rates $(LOAD_PARTICIPANTS),0 $(LOADTEST_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
