# netharness — everything a fresh Debian machine needs, installed by the targets themselves.
#   make install   system packages + .venv (idempotent; does nothing when up to date)
#   make demo      bring up topologies/lan.yaml on the netns backend, show it at work, tear down
#   make test      lint, types and the whole test suite (integration tests need root)
#   make soak      the reliability tests at their full cycle counts (minutes)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests and the netns backend use (ip netns exec, ss, nft).
APT_PACKAGES := iproute2 python3-venv nftables
PYTEST_ARGS ?=

.PHONY: install deps demo test soak lint typecheck unit integration clean-venv

install: deps $(STAMP)

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install$$missing" >&2; exit 3; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

demo: install
	$(BIN)/python examples/demo.py topologies/lan.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

soak: install
	NETHARNESS_SOAK=1 $(BIN)/pytest tests/reliability $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
