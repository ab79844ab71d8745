# async-llm-lab — everything a learner, an instructor or CI runs goes through these targets.
#
#   make lab        start JupyterLab on the notebooks (creates .venv on first use)
#   make lint       ruff, ruff format --check and mypy (labsupport, tools, tests, the capstone)
#   make test       the fast loop: lint, type-check and the unit tests (not the slow ones)
#   make notebooks-test  strict re-execution of every notebook (re-runs, interrupts, hygiene)
#   make check      everything CI runs: lint, types, every test (browser, JupyterHub, site,
#                   processes, live mode, the JupyterLite site) and every notebook; nothing may
#                   skip
#   make notebooks  regenerate and execute notebooks/ from course/ (ONLY=01 for one notebook)
#   make lock       re-pin requirements.lock from pyproject.toml (LOCK_FLAGS=--upgrade to bump all)
#   make bench      run the benchmarks: mock cost, demo fidelity, capstone, course time
#   make pythons    the checkers' tests and strict nbval on Debian's Python 3.13 and 3.14 (root;
#                   the last step of make check)
#   make drift      would the newest versions pyproject allows break the tests? (weekly; uses the
#                   package registry, changes nothing here)
#   make venv       create or update .venv from requirements.lock
#   make site       build the course website into build/site/ from the committed notebooks
#   make node-tools install the npm tools the tests use into node_modules/ (npm ci)
#   make lite       build the course as a JupyterLite site (Python in the browser) into build/lite/
#   make lite-lock  re-pin lite/requirements.lock, the packages the JupyterLite site installs

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Written after a successful install; older than requirements.lock or pyproject.toml => reinstall.
INSTALLED := $(VENV)/.installed
# The npm tools the tests run (axe-core, configurable-http-proxy), as package-lock.json pins them.
NODE_TOOLS := node_modules/.installed
# The venv's IPython kernel config: every kernel loads labsupport's first-cell hint.
KERNEL_HINT := $(VENV)/etc/ipython/ipython_kernel_config.py
ONLY ?=
LOCK_FLAGS ?=
# The extras `make lock` pins and `make drift` upgrades.
EXTRAS := --extra test --extra site --extra workshop --extra clients --extra lite

.PHONY: venv lab lint test notebooks-test check lock notebooks bench drift site node-tools pythons \
	lite lite-lock

venv: $(INSTALLED) $(KERNEL_HINT)

node-tools: $(NODE_TOOLS)

$(NODE_TOOLS): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# uv installs the lock exactly and fast; bootstrap it with pip, at the version the lock pins
# (the lock lists uv too, so `uv pip sync` keeps it installed).
$(BIN)/uv:
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 14))' || \
		{ echo "error: $(PYTHON) is not Python 3.11 to 3.14 (pyproject's requires-python);" \
			"run: make PYTHON=python3.13 ..." >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$$(grep -m1 '^uv==' requirements.lock 2>/dev/null || echo uv)"

$(INSTALLED): requirements.lock pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip sync --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --compile-bytecode --python $(BIN)/python --no-deps -e .
	touch $@

# A cell run before a notebook's first cell (`lab.setup(...)`) then says so in one line.
$(KERNEL_HINT): labsupport/kernel_hint.py | $(INSTALLED)
	$(BIN)/python -m labsupport.kernel_hint
	touch $@

# Headless-friendly: no browser, loopback only, and no calls home for news or update checks.
# Jupyter refuses to run as root (containers, CI) unless told it is deliberate.
lab: venv
	$(BIN)/jupyter lab notebooks/ --no-browser --ip=127.0.0.1 \
		--LabApp.news_url=None \
		--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate \
		$(if $(filter 0,$(shell id -u)),--allow-root)

# pytest's options (--nbval --nbval-current-env, the sanitizer, timeouts, workers) live in
# pyproject.toml, so a bare `pytest` in the repository root runs every tier, strictly.
# Where Linux allows it (user namespaces, iproute2), pytest runs in a network namespace of its own
# with only loopback up: no test, kernel or server it starts can send a packet off this machine,
# whatever it tries. LAB_NETNS tells the hygiene probes (tests/nbval_hygiene.py) to verify it.
# Root needs no user namespace for that, and must not have one: tests/test_workshop.py makes OS
# accounts and runs learners' servers as them, and a namespace mapping only root has no other uid.
USERNS := $(if $(filter 0,$(shell id -u)),,--user --map-root-user)
NETNS := $(shell unshare $(USERNS) --net true 2>/dev/null && command -v ip)
PYTEST := $(if $(NETNS),unshare $(USERNS) --net \
	sh -c '$(NETNS) link set lo up && LAB_NETNS=loopback-only exec "$$0" "$$@"') $(BIN)/pytest
# labsupport's coverage, printed by every tier that runs unit tests (files below 100% listed).
# `make test COVERAGE=` runs without it (tracing slows the timing-sensitive tests a little).
COVERAGE := --cov --cov-report=term
# `make check` fails below this share of labsupport's lines. Measured (December 2026): 85% in
# `make test`'s tier, 92% with the slow tests (browser, hub, site and notebook runs left out).
COVERAGE_MIN := 90
# The notebooks' demos time real concurrency (servers, worker processes, 1,000 requests) and were
# written for one notebook per core: one worker per physical core, not per hyper-thread.
NOTEBOOK_WORKERS := --numprocesses=auto
# The checkers' tests and strict nbval on Debian's 3.13 and 3.14 (`make pythons`).
OTHER_PYTHONS := $(BIN)/python tools/other_pythons.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The fast loop, a few minutes: no Chromium, npm tools or redis-server needed (a test that needs
# one says so in one line and is skipped).
test: lint
	$(PYTEST) tests -m "not slow and not notebook and not corpus" $(COVERAGE)

# Every notebook, learner and solution, re-executed under strict nbval, each cell run a second
# time and long cells interrupted (tests/nbval_hygiene.py). One: pytest notebooks/NN_name.ipynb
notebooks-test: venv
	$(PYTEST) notebooks $(NOTEBOOK_WORKERS)

# Everything CI runs (.ci/run calls it). LAB_NO_SKIP=1: a test whose program (Chromium,
# redis-server, the npm tools, the JupyterLite site's wheels) is missing fails instead of being
# skipped. `lite` comes first: its wheel download needs the package registry, and the tests run
# loopback-only. Last, the same on Debian's Python 3.13 and 3.14 (`make pythons`: it makes or
# updates each Debian root from the Debian and package registries, then tests loopback-only).
check: lint $(NODE_TOOLS) lite
	LAB_NO_SKIP=1 $(PYTEST) tests $(COVERAGE) --cov-fail-under=$(COVERAGE_MIN)
	LAB_NO_SKIP=1 $(PYTEST) notebooks $(NOTEBOOK_WORKERS)
	$(OTHER_PYTHONS)

lock: | $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml $(EXTRAS) --python-version 3.11 --universal \
		--no-emit-index-url --custom-compile-command "make lock" $(LOCK_FLAGS) -o requirements.lock

# The site shows the notebooks' stored outputs (nothing re-executed); see tools/build_site.py.
site: venv
	$(BIN)/python tools/build_site.py

# Offline: Pyodide from node_modules/, wheels pip downloads once into build/lite-wheels/ (see
# tools/build_lite.py); the site fetches nothing at run time but its own files.
lite: venv $(NODE_TOOLS)
	$(BIN)/python tools/build_lite.py

# Resolved for Pyodide (sys_platform == "emscripten") at the versions requirements.lock pins.
# widgetsnbextension is left out: the Pyodide kernel ships a stand-in of its own (the real one is
# the classic Notebook's JavaScript, unused in JupyterLite).
lite-lock: | $(BIN)/uv
	$(BIN)/uv pip compile lite/requirements.in --python-platform wasm32-pyodide2025 \
		--python-version 3.14 -c requirements.lock --generate-hashes --no-emit-index-url \
		--no-emit-package widgetsnbextension --custom-compile-command "make lite-lock" \
		-o lite/requirements.lock

# Executing the solutions must not mark the developer's own exercises passed (labsupport.progress).
notebooks: venv
	LAB_PROGRESS=off $(BIN)/python tools/build_notebooks.py $(if $(ONLY),--only $(ONLY))

# Every benchmark runs even when one misses its target; the exit status says whether any did.
bench: venv
	@status=0; \
	$(BIN)/python benchmarks/run.py || status=1; echo; \
	$(BIN)/python benchmarks/capstone.py || status=1; echo; \
	$(BIN)/python benchmarks/course.py || status=1; \
	exit $$status

# Resolves the newest allowed versions into a temporary lock and venv, runs the unit tests there,
# and prints what moved, each direct dependency's newest release and its date (frozen ones
# flagged), and what broke; exit status 1 on a break. See tools/drift.py.
drift: venv
	$(BIN)/python tools/drift.py $(EXTRAS)

# The Pythons learners have besides this venv's: Debian trixie (3.13) and sid (3.14), each in a
# throwaway root made with debootstrap (the network only for that), the tests loopback only.
# Needs root. The last step of `make check` (README: "Supported Pythons").
# See tools/other_pythons.py.
pythons: venv
	$(OTHER_PYTHONS)
