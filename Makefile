# Convenience targets; the README's two commands are the reference.
PY ?= python

.PHONY: install test test-all lint bench reproduce readme

install:
	$(PY) -m pip install -e '.[test]'

test:
	$(PY) -m pytest

test-all:
	$(PY) -m pytest -m ""

lint:
	ruff check .

bench:
	$(PY) benchmarks/bench_engine.py

# The README's parameter table, generated from pipeline/engine/params.py.
readme:
	$(PY) docs/sync_readme.py
