"""Analysis of a results table: scores and leaderboards, correlations, regressions, plots, public tables."""
