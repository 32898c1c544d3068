"""Evaluation: the statistics (bootstrap intervals, paired tests, curves, calibration error; statistics.py)
and the assessment of a model on the test split that the evaluate stage writes and registers
(assessment.py)."""
