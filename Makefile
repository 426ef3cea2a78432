# hoopai-relay: the two commands a user needs are `make run` and `make test`.
# Everything else is here so that those two work on a fresh machine with only
# Python 3.11+, Java 17+ and Maven installed.

KAFKA_VERSION ?= 4.1.1
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCALKAFKA := $(PYTHON) dev/localkafka.py
export KAFKA_VERSION

.PHONY: help venv kafka-fetch kafka-up kafka-down kafka-cluster-up kafka-cluster-down \
        kafka-logs lint test run clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

venv: $(BIN)/.installed  ## create .venv with the project and its dev tools

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

kafka-fetch:  ## resolve the Kafka jars from Maven Central into ~/.cache (once)
	$(LOCALKAFKA) fetch

kafka-up:  ## one KRaft broker on 127.0.0.1:9092 (no-op if already up)
	$(LOCALKAFKA) up

kafka-down:  ## stop it by its recorded pid and drop its data
	$(LOCALKAFKA) down

kafka-cluster-up:  ## three KRaft brokers on 127.0.0.1:19092-19094, RF 3, min ISR 2
	$(LOCALKAFKA) up --cluster cluster

kafka-cluster-down:  ## stop the three brokers
	$(LOCALKAFKA) down --cluster cluster

kafka-logs:  ## tail the logs of the local brokers
	@$(LOCALKAFKA) logs; $(LOCALKAFKA) logs --cluster cluster

lint: venv  ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The pytest fixtures bring up the broker (and the cluster, for the tests that need it)
# and stop only what they started: a broker you started with `make kafka-up` stays up.
test: venv kafka-fetch lint  ## lint, then every test against real brokers
	$(BIN)/pytest

run: venv kafka-up  ## the relay against the local broker
	RELAY_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 $(BIN)/relay serve

clean:  ## remove the virtualenv and caches (not the Kafka jar cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
