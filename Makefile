# qtools - make test, make demo, make bench, make install.
PYTHON ?= python3
VENV ?= .venv
PREFIX ?= /usr/local
DESTDIR ?=
MANDIR ?= $(PREFIX)/share/man
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib/qtools
FAST ?=
PIPFLAGS ?=
PROGRAMS = greylist mfcheck rblcheck rhostcheck tarpit throttle validrcptto qtools-mkcdb qtools-report qtools-adaptive qtools-list qtools-queue
# Debian packages the end-to-end tests, the demo and the benchmarks use.
DEBS = ucspi-tcp rbldnsd swaks redis-server openssl mandoc freecdb daemontools chromium python3-pip
# qtools-queue's scanners: spamd (its own package since Debian 12) and clamd.
DEBS += spamassassin spamd spamc clamav clamav-daemon faketime

VPY = $(VENV)/bin/python

.PHONY: all test check demo demo-report bench fuzz load install uninstall debs venv clean

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

# A day of sample log lines, its report as text and HTML, and a screenshot
# of the page taken by headless Chromium (which fetches nothing: the page
# is self-contained).
demo-report: debs venv
	mkdir -p demo
	$(VPY) bench/samplelog.py -n 4000 > demo/sample.log
	$(VENV)/bin/qtools-report -q 10 -r 15 -H demo/report.html demo/sample.log > demo/report.txt
	chromium --headless --disable-gpu --no-sandbox --no-first-run --hide-scrollbars \
	  --user-data-dir="$(CURDIR)/demo/chromium" --window-size=1100,1250 \
	  --screenshot="$(CURDIR)/demo/report.png" "file://$(CURDIR)/demo/report.html" 2>/dev/null
	@echo "demo-report: demo/report.txt, demo/report.html, demo/report.png"

bench: debs venv
	$(VPY) bench/run.py

fuzz: debs venv
	QTOOLS_FUZZ_SESSIONS=100000 QTOOLS_CRASH_ROUNDS=100 $(VPY) -m pytest -q tests/test_fuzz.py tests/test_attacks.py tests/test_crash.py tests/test_address.py

load: debs venv
	QTOOLS_LOAD_CONNECTIONS=5000 $(VPY) -m pytest -q tests/e2e/test_load.py

# A self-contained installation for $(PYTHON) (3.9 or later): the package
# and pure-cdb (cdbx too with FAST=1) in $(LIBDIR), the programs in $(BINDIR)
# with "#!$(PYTHON) -IS" as their first line, the man pages in $(MANDIR).
# DESTDIR stages it for a package; $(LIBDIR)/MANIFEST lets uninstall remove
# exactly what install put there.  See install.sh.
install:
	DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' BINDIR='$(BINDIR)' LIBDIR='$(LIBDIR)' \
	  MANDIR='$(MANDIR)' PYTHON='$(PYTHON)' FAST='$(FAST)' PIPFLAGS='$(PIPFLAGS)' \
	  PROGRAMS='$(PROGRAMS)' sh install.sh install

uninstall:
	DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' LIBDIR='$(LIBDIR)' sh install.sh uninstall

clean:
	rm -rf $(VENV) build dist *.egg-info demo .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
