"""Leaderboards built from the store alone: scoring, then rendering."""

from benchmark.leaderboard.render import write_leaderboard
from benchmark.leaderboard.score import provenance_summary, score_runs
from benchmark.leaderboard.suite_scores import Dropped, SuiteScores, score_suite

__all__ = ["Dropped", "SuiteScores", "provenance_summary", "score_runs", "score_suite", "write_leaderboard"]
