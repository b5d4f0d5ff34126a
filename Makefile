# podnet: developer entry points.  `make demo` and `make test` are all a new machine needs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON  ?= /usr/bin/python3
VENV    := .venv
STAMP   := $(VENV)/.stamp
ARGS    ?=
# git does not keep empty dirs: lint those of src tests bench that exist.
LINT_DIRS := $(wildcard src tests bench)

# Debian packages the tests, the demo and the interop peers need (chromium: the dashboard's
# browser test drives it through Playwright, whose bundled node driver needs libatomic1;
# `playwright install` downloads nothing here; gcc and libc6-dev: the CNI exec shim, built by
# `podnet install-cni`, src/podnet/cni/shim/).
DEB_PACKAGES := nftables iproute2 podman runc containernetworking-plugins busybox-static gcc libc6-dev \
	iperf3 conntrack python3-venv ethtool procps util-linux etcd-server containerd bird2 \
	chromium libatomic1 haproxy wrk

.PHONY: deps apt-deps venv test lint demo bench clean

# A .venv copied or cloned from another directory has console scripts whose shebangs point
# at that other directory: throw it away so it is rebuilt here.
VENV_STALE := $(shell sb=$$(head -n1 $(VENV)/bin/pip 2>/dev/null | sed -n 's|^\#!\(/.*/bin/python[0-9.]*\)$$|\1|p'); \
	[ -n "$$sb" ] && [ "$$(readlink -f "$$(dirname "$$sb")")" != "$$(readlink -f $(VENV)/bin)" ] && echo yes)
ifeq ($(VENV_STALE),yes)
$(info $(VENV) belongs to another directory; recreating it)
$(shell rm -rf $(VENV))
endif

deps: apt-deps $(STAMP)

# Only touches apt when a package is missing (dpkg-query per package is fast).
apt-deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' \
			|| missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -q; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(VENV)/bin/python: | apt-deps
	$(PYTHON) -m venv $(VENV)

# Re-install when pyproject.toml changes (or the venv is new).
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

# ruff, and the import contracts of pyproject.toml (the layers: docs/architecture.md).
lint: deps
	$(VENV)/bin/ruff check $(LINT_DIRS)
	$(VENV)/bin/lint-imports

# Lint failures fail the target too, but pytest still runs (and prints the last lines).
# The suite runs on WORKERS pytest-xdist processes, a module at a time per worker (a module's
# labs are built once), in collection order: e2e, interop and ns (the labs) first, the short
# unit modules last to even out the end (xdist's own reorder, by test count, leaves the
# one-test labs for last); then the modules marked `alone` by tests/conftest.py, alone.
# 3 workers on 2 vCPUs: the labs mostly wait (timers, convergence), a third worker fills
# those waits. --durations: every run names its slowest steps (the suite's budget is 20 minutes).
WORKERS ?= 3
test: deps
	@lint=0; $(MAKE) --no-print-directory lint || { lint=$$?; echo "lint failed (rc=$$lint); running pytest anyway"; }; \
	rc=0; echo "$(VENV)/bin/pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder -m 'not alone' --durations=30"; \
	$(VENV)/bin/pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder -m "not alone" --durations=30 || rc=$$?; \
	echo "$(VENV)/bin/pytest -q -m alone --durations=10"; \
	$(VENV)/bin/pytest -q -m alone --durations=10 || rc=$$?; \
	[ $$rc -eq 0 ] || exit $$rc; \
	exit $$lint

demo: deps
	$(VENV)/bin/podnet demo $(ARGS)

# Every bench and one report with plots (bench/out/<time>/report.html); ARGS=--quick: a few minutes.
bench: deps
	$(VENV)/bin/python bench/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .import_linter_cache build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
