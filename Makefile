# hoopai-relay: the two commands a user needs are `make run` and `make test`.
# Everything else is here so that those two work on a fresh machine with only
# Python 3.11+, Java 17+ and Maven installed (and, for the image, Debian's apt as root).

KAFKA_VERSION ?= 4.1.1
HELM_VERSION ?= v3.19.0
TOXIPROXY_VERSION ?= v2.12.0
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCALKAFKA := $(PYTHON) dev/localkafka.py
# Helm is built once with the Go toolchain into a cache outside the repo, like the Kafka jars.
HELM_DIR := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/hoopai-relay/helm-$(HELM_VERSION)
HELM := $(HELM_DIR)/helm
# Prometheus and promtool, from Debian's `prometheus` package: `apt-get download` and
# unpacked into the cache, not installed, so that its init script never starts a system
# Prometheus (on :9090) and no root is needed (but for `apt-get update` on a fresh machine).
PROMETHEUS_DIR := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/hoopai-relay/prometheus-deb
PROMETHEUS := $(PROMETHEUS_DIR)/usr/bin/prometheus
PROMTOOL := $(PROMETHEUS_DIR)/usr/bin/promtool
# Toxiproxy (Shopify's TCP fault proxy) for the network fault tests, built like Helm.
# `go install` names the binary after its package directory: cmd/server.
TOXIPROXY_DIR := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/hoopai-relay/toxiproxy-$(TOXIPROXY_VERSION)
TOXIPROXY := $(TOXIPROXY_DIR)/server
export KAFKA_VERSION HELM PROMETHEUS PROMTOOL TOXIPROXY

.PHONY: help venv kafka-fetch kafka-up kafka-down kafka-cluster-up kafka-cluster-down \
        kafka-secure-up kafka-secure-down \
        kafka-logs helm prometheus image-tools image toxiproxy lint lock test run demo demo-stop bench rounds soak chaos clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

venv: $(BIN)/.installed  ## create .venv with the project and its dev tools

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(BIN)/.runtime-installed $@

# The project without the dev tools: enough for `make run` and `make demo`, and quicker.
$(BIN)/.runtime-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

kafka-fetch:  ## resolve the Kafka jars from Maven Central into ~/.cache (once)
	$(LOCALKAFKA) fetch

kafka-up:  ## one KRaft broker on 127.0.0.1:9092 (no-op if already up)
	$(LOCALKAFKA) up

kafka-down:  ## stop it by its recorded pid and drop its data (FORCE=1: another checkout's too)
	$(LOCALKAFKA) down $(if $(FORCE),--force)

kafka-cluster-up:  ## three KRaft brokers on 127.0.0.1:19092-19094, RF 3, min ISR 2
	$(LOCALKAFKA) up --cluster cluster

kafka-cluster-down:  ## stop the three brokers
	$(LOCALKAFKA) down --cluster cluster

kafka-secure-up: venv  ## one broker with TLS, mutual TLS, SASL_SSL, OAUTHBEARER (see README)
	$(BIN)/python dev/securekafka.py up

kafka-secure-down:  ## stop it and its OIDC stand-in; delete its certificates
	$(LOCALKAFKA) down --cluster secure

kafka-logs:  ## tail the logs of the local brokers
	@$(LOCALKAFKA) logs; $(LOCALKAFKA) logs --cluster cluster

helm: $(HELM)  ## build the pinned Helm with Go (once, cached in ~/.cache)

$(HELM):
	GOBIN=$(HELM_DIR) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

prometheus: $(PROMTOOL)  ## unpack Debian's prometheus package (server and promtool) into ~/.cache (once)

$(PROMTOOL):
	rm -rf $(PROMETHEUS_DIR).tmp && mkdir -p $(PROMETHEUS_DIR).tmp
	cd $(PROMETHEUS_DIR).tmp && { apt-get download prometheus || \
		{ apt-get update && apt-get download prometheus; }; }
	dpkg-deb -x $(PROMETHEUS_DIR).tmp/prometheus_*.deb $(PROMETHEUS_DIR).tmp
	rm $(PROMETHEUS_DIR).tmp/prometheus_*.deb
	rm -rf $(PROMETHEUS_DIR) && mv $(PROMETHEUS_DIR).tmp $(PROMETHEUS_DIR)
	$(PROMTOOL) --version

toxiproxy: $(TOXIPROXY)  ## build the pinned Toxiproxy with Go (once, cached in ~/.cache)

$(TOXIPROXY):
	GOBIN=$(TOXIPROXY_DIR) go install github.com/Shopify/toxiproxy/v2/cmd/server@$(TOXIPROXY_VERSION)

# buildah, podman, mmdebstrap and runc (Debian packages of the same names) build and run
# the image without a Docker engine. Installed only where missing, and only as root with
# apt; elsewhere this says what is missing and the image tests skip, saying so too.
IMAGE_TOOLS := buildah podman mmdebstrap runc

image-tools:  ## install buildah, podman, mmdebstrap and runc with apt (as root) if missing
	@missing=$$(for tool in $(IMAGE_TOOLS); do command -v $$tool >/dev/null || echo $$tool; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "make image-tools: apt-get install" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
			install -y -q --no-install-recommends $$missing; \
	else \
		echo "make image-tools: missing" $$missing "(Debian: apt-get install" $$missing \
		     "as root); the image tests will skip"; \
	fi

# The Dockerfile, unchanged, built by buildah into the machine's container storage; the
# stand-in for python:3.11-slim-bookworm first when no image has that name (dev/image.py).
image: image-tools  ## build hoopai-relay:dev with buildah (no Docker engine needed)
	$(PYTHON) dev/image.py build --tag hoopai-relay:dev

lint: venv  ## ruff, mypy, hadolint and docker compose config
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	$(BIN)/docker-compose -f docker-compose.yml config --quiet

lock: venv  ## regenerate requirements.lock and requirements-build.lock (the image's pins)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header --quiet -o requirements.lock.new
	{ sed -n '1,2p' requirements.lock; cat requirements.lock.new; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock && rm requirements.lock.new
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
		| $(BIN)/uv pip compile - --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header --quiet -o requirements-build.lock.new
	{ sed -n '1,2p' requirements-build.lock; cat requirements-build.lock.new; } > requirements-build.lock.tmp
	mv requirements-build.lock.tmp requirements-build.lock && rm requirements-build.lock.new

# The pytest fixtures bring up the broker (and the cluster, for the tests that need it)
# and stop only what they started: a broker you started with `make kafka-up` stays up.
# HOOPAI_IMAGE=1: the image tests too (tests/test_image.py; about 1 to 3 min warm).
test: venv kafka-fetch helm prometheus image-tools toxiproxy lint  ## lint, then every test against real brokers
	HOOPAI_IMAGE=1 $(BIN)/pytest

# On 127.0.0.1 unless RELAY_HTTP_HOST says otherwise: a dev machine's relay is for itself.
run: $(BIN)/.runtime-installed kafka-up  ## the relay against the local broker
	RELAY_HTTP_HOST=$${RELAY_HTTP_HOST:-127.0.0.1} \
	RELAY_KAFKA_BOOTSTRAP_SERVERS=$$($(LOCALKAFKA) bootstrap) $(BIN)/relay serve

demo: $(BIN)/.runtime-installed kafka-up  ## a dev key, Kafka, a relay in the background, every sample sent and read back
	$(BIN)/python dev/demo.py --bootstrap $$($(LOCALKAFKA) bootstrap)

demo-stop:  ## stop the relay that make demo left running (make kafka-down stops Kafka)
	$(BIN)/python dev/demo.py stop

# The benchmark (not part of `make test`); docs/benchmarks.md says how to read it.
BENCH_ARGS ?=

$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@

bench: venv $(BIN)/.bench-installed kafka-up  ## the relay beside its ceilings and peers (about 9 min)
	@if ! command -v wrk >/dev/null 2>&1 && ! echo '$(BENCH_ARGS)' | grep -q 'max-tool.python'; then \
		echo "make bench: wrk is not installed: 'apt-get install wrk' (Debian/Ubuntu)," \
		     "'brew install wrk' (macOS), or use the Python generator for the maximum:" \
		     "make bench BENCH_ARGS=--max-tool=python"; \
		exit 1; \
	fi
	$(BIN)/python -m bench $(BENCH_ARGS)

# The issue-21 ratios in interleaved rounds, median and range (docs/benchmarks.md).
ROUNDS_ARGS ?=

rounds: venv $(BIN)/.bench-installed kafka-up  ## the relay's ratios to its ceiling and peer, in rounds (about 4 min; needs wrk)
	$(BIN)/python -m bench.rounds $(ROUNDS_ARGS)

# The same fault tests as in `make test`, with the long durations (about 22 min on the 2-core dev box).
# 10 minutes at half the relay's max, memory sampled every 5 s (docs/benchmarks.md, Soak).
SOAK_ARGS ?=

soak: venv $(BIN)/.bench-installed kafka-up  ## memory over 10 minutes at 50% of the max (needs wrk)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

chaos: venv kafka-fetch toxiproxy  ## the long reliability runs; see docs/reliability.md
	HOOPAI_CHAOS=1 $(BIN)/pytest -m chaos -s -q --timeout=3600

clean:  ## remove the virtualenv and caches (not the Kafka jar cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
