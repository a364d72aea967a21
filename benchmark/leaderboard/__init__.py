"""Leaderboards built from the store alone: scoring, then rendering."""

from benchmark.leaderboard.render import write_leaderboard
from benchmark.leaderboard.score import provenance_summary, score_runs

__all__ = ["provenance_summary", "score_runs", "write_leaderboard"]
