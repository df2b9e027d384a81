"""Orchestration modes (critique, debate, ensemble, pipeline) as chained job DAGs in Redis.

The front calls ``orchestration.start.start_dag`` once per request; workers call
``orchestration.steps.complete_step`` after each step and take every later decision.
"""
