"""Tools run on purpose, each a command: the speed benchmark (bench, bench_setup, bench_timing), the validation
probes that set budgets and CAM choices (plateau, cam_choice), the results pages (readme: docs/RESULTS.md and the README's summary) and JupyterLab (lab).
No library module imports them; they may import anything.
"""
