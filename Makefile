# qtools - make test, make demo, make bench, make install.
PYTHON ?= python3
VENV ?= .venv
PREFIX ?= /usr/local
DESTDIR ?=
MANDIR ?= $(PREFIX)/share/man
PROGRAMS = greylist rblcheck rhostcheck tarpit validrcptto qtools-mkcdb
# Debian packages the end-to-end tests, the demo and the benchmarks use.
DEBS = ucspi-tcp rbldnsd swaks redis-server openssl mandoc freecdb daemontools

VPY = $(VENV)/bin/python

.PHONY: all test check demo bench fuzz load install debs venv clean

all: venv

debs:
	@missing=""; for p in $(DEBS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing </dev/null; \
	fi

# The venv has no setuptools, as those of Python 3.12 and later: pip builds
# in an isolated environment, and setuptools' distutils-precedence.pth would
# cost every program start half a millisecond.
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip uninstall -q -y setuptools
	$(VPY) -m pip install -q --config-settings editable_mode=compat -e '.[test,fast]'
	touch $@

venv: $(VENV)/.installed

test: debs venv
	$(VPY) -m pytest tests

check: test
	@for m in man/*.[0-9]; do mandoc -Tlint -W warning $$m || exit 1; done; echo "man pages: ok"

demo: debs venv
	sh examples/demo

bench: debs venv
	$(VPY) bench/run.py

fuzz: debs venv
	QTOOLS_FUZZ_SESSIONS=100000 QTOOLS_CRASH_ROUNDS=100 $(VPY) -m pytest -q tests/test_fuzz.py tests/test_attacks.py tests/test_crash.py tests/test_address.py

load: debs venv
	QTOOLS_LOAD_CONNECTIONS=5000 $(VPY) -m pytest -q tests/e2e/test_load.py

install:
	$(PYTHON) -m pip install --no-deps --prefix '$(PREFIX)' $(if $(DESTDIR),--root '$(DESTDIR)') .
	mkdir -p '$(DESTDIR)$(MANDIR)/man7' '$(DESTDIR)$(MANDIR)/man8'
	cp man/*.7 '$(DESTDIR)$(MANDIR)/man7/'
	cp man/*.8 '$(DESTDIR)$(MANDIR)/man8/'

clean:
	rm -rf $(VENV) build dist *.egg-info demo .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
