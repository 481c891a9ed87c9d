# netharness — everything a fresh Debian machine needs, installed by the targets themselves.
#   make install   system packages + .venv (idempotent; does nothing when up to date); one
#                  line per step, apt's and pip's output in .venv/install.log
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
# which its Linux-bridge switch uses; without recommends, so no Open vSwitch daemon. gcc
# and libc6-dev: bench/connections.py compiles its C baseline (bench/epoll_connect.c).
BENCH_APT_PACKAGES := mininet bridge-utils gcc libc6-dev
PYTEST_ARGS ?=

# Installing prints one line per step; apt's and pip's own output goes to $(LOG), whose
# tail and path a failed step prints (a fresh `make demo` shows the demo, not dpkg).
LOG := $(VENV)/install.log
# $(call failed,step): what a failed step prints before make stops.
failed = { echo "$(1) failed; the last lines of $(LOG):" >&2; tail -n 25 $(LOG) >&2; \
  echo "(the whole output: $(LOG))" >&2; exit 3; }

# $(call apt_install,packages,apt options,why): install those of `packages` that are missing.
define apt_install
@missing=""; for p in $(1); do \
  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
done; \
if [ -n "$$missing" ]; then \
  echo "installing Debian packages$$missing ($(3))"; \
  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install$$missing" >&2; exit 3; fi; \
  mkdir -p $(VENV); echo "== apt-get install$$missing" >> $(LOG); \
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) $$missing; } \
    >> $(LOG) 2>&1 || $(call failed,apt-get install$$missing); \
fi
endef

.PHONY: test-image install bytecode deps bench-deps bench demo image harness-image example-image test soak lint typecheck unit integration clean-venv

install: deps $(STAMP) bytecode

deps:
	$(call apt_install,$(APT_PACKAGES),,what the backends and the tests run)

# editable_mode=compat: a plain path in a .pth file. The default mode's import hook costs
# every `netharness` command ~19 ms at interpreter start.
$(STAMP): pyproject.toml Makefile
	@mkdir -p $(VENV)
	@test -x $(BIN)/python || { echo "creating the virtual environment $(VENV)"; \
	  $(PYTHON) -m venv $(VENV) >> $(LOG) 2>&1 || $(call failed,creating $(VENV)); }
	@echo "installing netharness (editable) and its Python packages with the dev tools into $(VENV)"
	@{ echo "== pip install -e .[dev]"; $(BIN)/python -m pip install --upgrade pip && \
	  $(BIN)/python -m pip install -e '.[dev]' --config-settings editable_mode=compat; } \
	  >> $(LOG) 2>&1 || $(call failed,pip install)
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
	$(call apt_install,$(BENCH_APT_PACKAGES),--no-install-recommends,Mininet and a C compiler for the benchmarks to compare with)

bench: install bench-deps
	$(BIN)/python bench/report.py

clean-venv:
	rm -rf $(VENV)
