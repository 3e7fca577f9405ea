# callconsent — the two commands a newcomer needs are `make run` and `make test`.
# Both install what they need themselves (a virtualenv in .venv; Debian packages via apt-get
# when they are missing and we run as root).

SHELL := /bin/bash
# Debian's own interpreter by default: a daemon that drops root privileges must still be able
# to read its interpreter, which a pyenv install under /root would not allow.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?=

# command -> Debian package, for what the test suite and the prompts need
DEBIAN_TEST_PACKAGES := initdb:postgresql espeak-ng:espeak-ng ffmpeg:ffmpeg sox:sox systemd-analyze:systemd chromium:chromium

.PHONY: run test lint bench demo sql dialplan venv install debian-deps daemon-account clean help reliability

help:
	@echo "make run    start the daemon on embedded defaults (SQLite, ./var/)"
	@echo "make test   install test dependencies and run the whole suite"
	@echo "make lint   ruff"
	@echo "make bench  run every benchmark (QUICK=1 for a short run)"
	@echo "make reliability  tamper, fuzz, injection, kills and faults under load, a 1-minute soak (< 10 min)"
	@echo "make sql    regenerate sql/*.sql from the migrations"
	@echo "make demo   three consent calls through a simulated Asterisk, then what was kept"
	@echo "make dialplan  regenerate dialplan/asterisk/*.conf from agi/templates/"

$(VPY):
	@echo ">>> creating virtualenv $(VENV) with $(PYTHON)"
	@if ! $(PYTHON) -m venv --help >/dev/null 2>&1 || ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo ">>> apt-get install python3-venv"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	  else echo "!!! python3 -m venv is not usable: install python3-venv" >&2; exit 1; fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

venv: $(VPY)

$(STAMP): $(VPY) setup.cfg pyproject.toml
	@echo ">>> installing callconsent (editable) with its test dependencies into $(VENV)"
	$(VPY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# Installs the Debian packages the tests need, when missing and when we can (root + apt).
debian-deps:
	@missing=""; \
	for pair in $(DEBIAN_TEST_PACKAGES); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  if ! command -v $$cmd >/dev/null && ! ls /usr/lib/postgresql/*/bin/$$cmd >/dev/null 2>&1; then missing="$$missing $$pkg"; fi; \
	done; \
	if [ -z "$$missing" ]; then echo ">>> Debian packages present"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo ">>> apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	  echo "!!! missing Debian packages:$$missing (not root or no apt-get): the tests that need them will skip"; \
	fi

# The daemon never runs as root: started as root it switches to this account, which must then
# reach this checkout (its code, ./var/). A clone below a 0700 directory (/root, mktemp -d) is
# made reachable with a traversal-only ACL on the blocking directories (README.md says why).
daemon-account: install
	@if [ "$$(id -u)" = 0 ]; then \
	  if ! getent passwd callconsent >/dev/null; then \
	    echo ">>> running as root: creating the unprivileged system user 'callconsent' for the daemon"; \
	    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin callconsent; \
	  fi; \
	  if ! command -v setfacl >/dev/null && command -v apt-get >/dev/null; then \
	    echo ">>> apt-get install acl"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends acl; \
	  fi; \
	  $(VPY) -m callconsent.devaccess callconsent "$(CURDIR)"; \
	fi

run: install daemon-account
	@echo ">>> starting callconsent serve (Ctrl-C to stop)"
	$(VENV)/bin/callconsent $(if $(CONFIG),--config $(CONFIG)) serve

test: debian-deps install daemon-account
	@echo ">>> running the test suite"
	$(VPY) -m pytest $(PYTEST_ARGS)

# docs/reliability.md: the fast parts run in `make test` too (fewer fuzz examples, no kills)
reliability: debian-deps install daemon-account
	@echo ">>> reliability: tamper-evidence, wire fuzzing (200 examples a surface), injection,"
	@echo ">>> SIGKILL/SIGTERM under load, disk full, keys, PostgreSQL and PBX restarts, the crash"
	@echo ">>> matrix, then a 1-minute soak"
	CALLCONSENT_FUZZ_EXAMPLES=200 CALLCONSENT_RELIABILITY_HEAVY=1 $(VPY) -m pytest -q \
	  -W ignore::hypothesis.errors.HypothesisWarning tests/reliability \
	  tests/esl_listener/test_outbound_refusal.py tests/recorder/finalize/test_crash.py
	$(VPY) bench/soak.py --quick

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	@set -e; for b in bench/*.py; do \
	  case "$$(basename $$b)" in _*) continue;; esac; \
	  echo ">>> $$b"; $(VPY) $$b $(if $(QUICK),--quick); done

sql: install
	$(VENV)/bin/callconsent db sql --dialect sqlite > sql/sqlite.sql
	$(VENV)/bin/callconsent db sql --dialect postgresql > sql/postgresql.sql

demo: debian-deps install daemon-account
	$(VPY) tests/support/asterisk_demo.py

dialplan: install
	$(VPY) -c 'from agi.dialplan import render, DialplanSettings; \
	[open(f"dialplan/asterisk/{n}", "w").write(t) for n, t in render(DialplanSettings()).items()]'

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
