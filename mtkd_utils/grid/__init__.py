"""The batch runner: a preset's grid of notebook runs as a DAG (dag), run here or on Dask workers (executor),
checked before anything starts (plan_checks), one runner per experiment (lock); the command line is batch
(`python -m mtkd_utils.batch`).
May import: data, train, analysis and the top-level modules — never tools.
"""
