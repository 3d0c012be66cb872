# Provenant — the two newcomer commands are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test install lint typecheck migrations-check bench clean system-deps browser

$(STAMP): pyproject.toml setup.py service/integrity/_leafscan.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

## system libraries from Debian packages, installed only when missing (CI runs as root; elsewhere
## sudo is used if present): Pango for PDF reports (WeasyPrint), Chromium for the UI browser test
APT := $(shell [ "$$(id -u)" = 0 ] && echo apt-get || echo sudo apt-get)
system-deps:
	@ldconfig -p 2>/dev/null | grep -q 'libpangoft2-1.0.so.0' || { \
	  echo "installing Pango (PDF reports)"; \
	  $(APT) update -qq && $(APT) install -y -qq libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core; }

browser: system-deps
	@test -x /usr/bin/chromium || { \
	  echo "installing Debian's chromium (UI browser test)"; \
	  $(APT) update -qq && $(APT) install -y -qq chromium; }

## make run: install, migrate, create first-start keys, ingest the sample handbook (a no-op when
## unchanged), start the demo upstream and the gateway
run: $(STAMP) system-deps
	$(BIN)/provenant migrate
	$(BIN)/provenant keys bootstrap
	$(BIN)/provenant ingest samples/handbook --collection handbook --tenant default
	@$(BIN)/provenant demo-upstream --port 8081 & DEMO=$$!; \
	  trap 'kill $$DEMO 2>/dev/null' EXIT INT TERM; \
	  $(BIN)/provenant serve

## make test: install test needs, lint, type-check, check migrations, run the suite
test: $(TEST_STAMP) browser
	$(BIN)/ruff check service tests bench migrations
	$(BIN)/ruff format --check service tests bench migrations
	$(BIN)/mypy
	$(BIN)/python -m pytest --durations=20

lint: $(TEST_STAMP)
	$(BIN)/ruff check service tests bench migrations

bench: $(TEST_STAMP)
	$(BIN)/python bench/proxy.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache tests/artifacts
