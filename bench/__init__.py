"""Benchmarks: this service against llama-cpp-python in-process, its own server and llama.cpp's.

Run everything with `.venv/bin/python -m bench.run_all`; docs/benchmarks.md holds the latest table.
"""
