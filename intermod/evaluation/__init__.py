"""Measuring registrations: per-run metrics and report, Table 1 across runs, figures."""
