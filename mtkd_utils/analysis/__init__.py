"""Analysis (notebooks 04-07): error analysis, bootstrap intervals, results tables and figures, CAMs, the study.

Holds the error analysis (errors), confidence intervals (bootstrap), Table 1 and the comparisons (results), figures
(plots), Grad-CAM and how well it localises (cam, localisation), notebook 07's study (study, study_rows) and the
small views every notebook starts with (views).
May import: train, data and the top-level modules — never grid or tools.
"""
