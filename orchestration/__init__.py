"""Orchestration modes (critique, debate, ensemble, pipeline) as chained job DAGs in Redis.

The front calls ``orchestration.start.start_dag`` once per request; workers run
``orchestration.steps.DagSteps`` around each step and take every later decision. Orchestration
builds on the worker's queue and wire types; the worker's entry point plugs DagSteps in, so
no worker module imports orchestration.
"""
