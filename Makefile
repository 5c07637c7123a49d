# i2nsf-sdn — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := libyang2-dev libyang2-tools iproute2 tcpdump iputils-ping ethtool iperf3 nftables \
	strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins tshark \
	yangcli libnetconf2-2 curl systemd
# SFC fast path: tc-BPF program compiled on first use (nsf_agent/sfc/fastpath/build.py)
APT_PACKAGES += clang llvm libbpf-dev
APT_PACKAGES += libnetfilter-queue-dev iptables  # security functions: NFQUEUE (netfilterqueue), its hook
APT_PACKAGES += postgresql  # HA store tests (#21): a real server, started by tests/pgserver.py
STAMP := $(VENV)/.setup-stamp

.PHONY: setup test lint bench clean demo

setup: $(STAMP)

# Idempotent: installs Debian packages only when missing, rebuilds the venv only when
# pyproject.toml changed.
$(STAMP): pyproject.toml
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root for apt-get install$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# Gateway-to-gateway IPsec managed by the controller, on network namespaces (needs root).
demo: setup
	bash examples/gateway_to_gateway.sh
	bash examples/sfc_use_cases.sh

test: setup
	$(PY) -m pytest -q

# Long acceptance runs (> 60 s each, e.g. 10 HA fail-overs, docs/ha.md): not in `make test`.
.PHONY: test-soak
test-soak: setup
	$(PY) -m pytest -q -m soak

lint: setup
	$(VENV)/bin/ruff check .
	cd yang && ../$(PY) -m pyang --ietf -p .:standard $$(ls *.yang)
	cd yang && yanglint -p . -p standard $$(ls *.yang)

bench: setup
	@set -e; for b in bench/*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# SAD tests need a kernel with ESP: boot a cached Debian 6.1 kernel under QEMU (TCG) with
# the host's Python and this tree shared over 9p, run tests/kernel there (tools/kernel-vm).
.PHONY: test-kernel
test-kernel: setup
	bash tools/kernel-vm/run.sh
