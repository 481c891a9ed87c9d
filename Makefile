# netharness — everything a fresh Debian machine needs, installed by the targets themselves.
#   make install   system packages + .venv (idempotent; does nothing when up to date)
#   make demo      bring up topologies/lan.yaml on the netns backend, show it at work, tear down
#   make image     the docker backend's host image (reused while current; needs Docker)
#   make harness-image  the image compose.yaml runs the harness in
#   make example-image  the python-less busybox image topologies/own-software.yaml runs
#   make test      lint, types and the whole test suite (integration tests need root)
#   make soak      the reliability tests at their full cycle counts (minutes)
#   make bench     every benchmark in bench/, written to BENCHMARKS.md (under 10 minutes)

PYTHON ?= python3
# compose.yaml sets VENV: a venv outside the mounted repository.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the backends and tests use: ip netns exec and ss, nft, sshd (the ssh
# backend's tests), mmdebstrap (the docker host image), nmap (probe cross-check), tcpdump
# and tshark (captures), graphviz (graphs), busybox-static (a python-less docker image),
# dnsmasq-base (a Debian server run as a user's process in the tests; no system service).
APT_PACKAGES := iproute2 python3-venv nftables openssh-server mmdebstrap nmap tcpdump tshark graphviz busybox-static dnsmasq-base
# Only `make bench` needs these: Mininet (the peer bring-up is compared with) and brctl,
# which its Linux-bridge switch uses; without recommends, so no Open vSwitch daemon.
BENCH_APT_PACKAGES := mininet bridge-utils
PYTEST_ARGS ?=

# $(call apt_install,packages,apt options): install those of `packages` that are missing.
define apt_install
@missing=""; for p in $(1); do \
  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
done; \
if [ -n "$$missing" ]; then \
  echo "installing Debian packages:$$missing"; \
  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install$$missing" >&2; exit 3; fi; \
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) $$missing; \
fi
endef

.PHONY: test-image install bytecode deps bench-deps bench demo image harness-image example-image test soak lint typecheck unit integration clean-venv

install: deps $(STAMP) bytecode

deps:
	$(call apt_install,$(APT_PACKAGES),)

# editable_mode=compat: a plain path in a .pth file. The default mode's import hook costs
# every `netharness` command ~19 ms at interpreter start.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	@touch $@

# Compiled once here, so no command compiles the controller at every start, even where
# PYTHONDONTWRITEBYTECODE is set (compileall rewrites only what changed).
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q harness hostagent

demo: install
	$(BIN)/python examples/demo.py topologies/lan.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo

typecheck: install
	$(BIN)/mypy

image: install
	$(BIN)/netharness image build

harness-image: install
	$(BIN)/netharness image build --harness

example-image: install
	sh examples/busybox-image.sh

# The docker backend's tests need the host image, unless NETHARNESS_BACKENDS leaves docker out.
test-image: install
	@case ",$${NETHARNESS_BACKENDS-netns,docker}," in \
	  *,docker,*) $(BIN)/netharness image build ;; \
	  *) echo "NETHARNESS_BACKENDS=$$NETHARNESS_BACKENDS: no container image needed" ;; \
	esac

test: lint typecheck test-image
	$(BIN)/pytest $(PYTEST_ARGS)

soak: install
	NETHARNESS_SOAK=1 $(BIN)/pytest tests/reliability $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

bench-deps:
	$(call apt_install,$(BENCH_APT_PACKAGES),--no-install-recommends)

bench: install bench-deps
	$(BIN)/python bench/report.py

clean-venv:
	rm -rf $(VENV)
