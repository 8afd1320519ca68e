# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Debian packages the test servers and real clients need: command -> package. PostgreSQL's
# server (tests/pg.py) is checked apart: Debian keeps initdb off PATH. node and npm run
# tests/node (npm ci below). promtool is apart too (below). zsh and fish run the shell
# completion scripts (tests/test_cli_completion.py).
APT_NEEDS := docker-registry:docker-registry htpasswd:apache2-utils skopeo:skopeo \
	systemd-analyze:systemd node:nodejs npm:npm zsh:zsh fish:fish

.PHONY: run install test test-deps lint proto bench clean container-test constraints

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Editable through hatchling: one static .pth line (the repository), no import-hook finder
	# (which costs each helper start ~20 ms). An old setuptools install left metadata here
	# that, first on sys.path, would hide the real entry points.
	# constraints.txt: the exact versions CI and the image were tested with (`make constraints`).
	rm -rf credential_broker.egg-info
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# Bytecode for broker/ now: in a shell with PYTHONDONTWRITEBYTECODE it is never written,
	# and every helper / CLI start would compile its modules again (~10 ms, bench/bench_helpers.py).
	$(PY) -m compileall -q broker >/dev/null
	touch $@

install: $(VENV)/.installed

run: install  ## start the daemon in the foreground (SQLite + sockets under ./.broker, recorded in a pointer file)
	$(BIN)/broker serve

test-deps:
	@missing=""; for pair in $(APT_NEEDS); do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair##*:}"; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# promtool: no PyPI or npm package ships it and Debian 12 has no promtool-only package, so
	@# it is taken out of Debian's prometheus package (19 MB download) into /usr/local/bin:
	@# 48 MB, instead of installing the server, its web UI's JavaScript and a service user (96 MB+).
	@command -v promtool >/dev/null || { \
	  echo "installing promtool (the binary of Debian's prometheus package)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  tmp=$$(mktemp -d) && cd "$$tmp" && \
	  { apt-get download -qq prometheus 2>/dev/null || \
	    { $$SUDO apt-get update -qq && apt-get download -qq prometheus 2>/dev/null; }; } && \
	  dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool > promtool && \
	  $$SUDO install -m 755 promtool /usr/local/bin/promtool && cd / && rm -rf "$$tmp"; }
	@# npm ci again whenever package-lock.json is newer than the installed tree (a new client)
	@if [ ! tests/node/node_modules/.package-lock.json -nt tests/node/package-lock.json ]; then \
	  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error); fi

proto: install  ## regenerate broker/api/v1 from protos/
	$(PY) scripts/genproto.py

lint: install
	$(PY) scripts/genproto.py --check
	$(PY) scripts/settings_table.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: install test-deps lint  ## install everything the tests need and run the suite
	$(BIN)/pytest -q

# Builds the Dockerfile offline with buildah (a stand-in base made from this machine's
# Python) and runs the sidecar pattern from the image: ~2.5 min, so not part of `make test`.
container-test: install
	@command -v buildah >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  $$SUDO apt-get install -y -qq --no-install-recommends buildah >/dev/null; }
	$(BIN)/pytest -q -s -p no:cacheprovider deploy/container/test_image.py

bench: install test-deps
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

constraints: install  ## re-pin constraints.txt to what the venv holds now
	$(PY) -m pip freeze --exclude-editable --exclude credential-broker | grep -v '^-e ' > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
