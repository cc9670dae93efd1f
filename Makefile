# advbias: the two commands a new user needs are `make demo` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
ADVBIAS := $(VENV)/bin/advbias
STAMP   := $(VENV)/.installed
export GIT_PYTHON_REFRESH := quiet
export PYTHONUNBUFFERED := 1

DEMO_DIR  ?= instance/demo
DEMO_PORT ?= 5000

.PHONY: install demo test test-fast bench loadtest clean

## install: create .venv and install advbias editable with its test extras (torch pinned), with uv
##          (https://docs.astral.sh/uv/) when it can be had, otherwise with pip. uv does not read pip's
##          configuration, so pip's configured indexes, wheel folders and constraints are handed to it
##          (tests/pip_to_uv.py). UV=... names a uv to use; without one on PATH it is fetched into .uv/.
install: $(STAMP)

UV ?= $(shell command -v uv 2>/dev/null)
UV_BOOTSTRAP := .uv
TORCH := torch==2.14.1 torchvision==0.29.1

$(STAMP): pyproject.toml
	@uv="$(UV)"; \
	if [ -z "$$uv" ] && { [ -x $(UV_BOOTSTRAP)/bin/uv ] || python3 -m pip install -q --target $(UV_BOOTSTRAP) uv >/dev/null 2>&1; }; then \
	  uv=$(UV_BOOTSTRAP)/bin/uv; fi; \
	if [ -n "$$uv" ]; then \
	  eval "set -- $$(python3 tests/pip_to_uv.py)"; \
	  echo "uv: $$uv $$*"; \
	  test -x $(PY) || "$$uv" venv -q --seed --python "$$(command -v python3)" $(VENV) && \
	  "$$uv" pip install -q --python $(PY) "$$@" $(TORCH) 'setuptools>=77' -e '.[test]'; \
	else \
	  echo "uv not available: installing with pip"; \
	  { test -x $(PY) || python3 -m venv $(VENV); } && \
	  $(PY) -m pip install -q --upgrade pip 'setuptools>=77' && \
	  $(PY) -m pip install -q $(TORCH) -e '.[test]'; \
	fi
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

## test: the whole test suite (browser, two servers, wheel and torchrun tests included); first installs
##       what the suite needs that the machine lacks (tests/provision.sh: as root, else it says what to run)
## test-fast: everything but the browser, two-server, wheel and torchrun tests, for development
## PYTEST_ARGS adds pytest arguments to both, e.g. PYTEST_ARGS='-x tests/test_experiment_flow.py'
PYTEST_ARGS ?=
FAST := not browser and not twoservers and not wheel and not torchrun
test: install
	tests/provision.sh
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	tests/provision.sh
	@status=0; $(PY) -m pytest -q -m '$(FAST)' $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "test-fast: no fast test in this selection"; status=0; fi; exit $$status

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
