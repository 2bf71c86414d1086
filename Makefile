# Beacon. Quick start: `make run` (the whole stack, locally) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast kafka kafka-stop postgres postgres-stop db lint fmt bench docs clean help

help:
	@echo "make run         install what is missing, start Kafka, receivers and all services on :8000"
	@echo "make test        install what is missing, start what the tests need, run the whole suite"
	@echo "make test-fast   unit tests only (in memory, seconds)"
	@echo "make kafka       the local Apache Kafka broker alone, at 127.0.0.1:9092 (kafka-stop ends it)"
	@echo "make postgres    a throwaway PostgreSQL for the tests (postgres-stop ends it)"
	@echo "make lint | fmt | bench | docs | clean"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	@tools/run.sh

test: $(STAMP)
	@tools/test.sh

test-fast: $(STAMP)
	$(BIN)/pytest -q tests/unit

kafka:
	@tools/kafka/kafka.sh start

kafka-stop:
	@tools/kafka/kafka.sh stop

postgres:
	@tools/postgres.sh start

postgres-stop:
	@tools/postgres.sh stop

db: $(STAMP)
	$(BIN)/beacon db upgrade

lint: $(STAMP)
	$(BIN)/ruff check services schemas tests bench tools

fmt: $(STAMP)
	$(BIN)/ruff check --fix services schemas tests bench tools

bench: $(STAMP) kafka
	$(BIN)/python -m bench

docs: $(STAMP)
	$(BIN)/python -m tools.export_schemas

clean:
	rm -rf var $(VENV) tools/kafka/target
