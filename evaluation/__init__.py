"""Scoring model outputs on the benchmark datasets: metrics, runs and plots."""
