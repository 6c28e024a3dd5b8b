"""Offline evaluation: full-ranking metrics, groups, bootstrap intervals, reports."""
