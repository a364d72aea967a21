"""How the planner groups runs: members too large for a group to pay train alone under ``auto``,
an explicit size groups them anyway, and a group larger than its share of memory is split, saying so."""

from __future__ import annotations

from pathlib import Path

from benchmark.batching import group_runs
from benchmark.plan import expand
from benchmark.spec import RunSpec, load_suite
from tests.conftest import write_suite


def _specs(tmp_path: Path, task: str, seeds: int) -> list[RunSpec]:
    fields = {
        "name": "plan",
        "tasks": [{"name": task}],
        "rules": [{"name": "sgd", "hparams": {"lr": 0.1}}],
        "seeds": list(range(seeds)),
        "budget": {"steps": 10, "eval_every": 5},
    }
    path = write_suite(tmp_path / "plan.yaml", **fields)
    return list(expand(load_suite(path), path).specs)


def test_auto_leaves_members_too_large_to_gain_alone_and_says_why(tmp_path: Path) -> None:
    large = _specs(tmp_path, "sparse_signal_d20000", 4)
    grouping = group_runs(large, "auto", memory=2**40)
    assert grouping.groups == ()
    assert len(grouping.alone) == 4
    [reason] = grouping.reasons
    assert "sparse_signal_d20000" in reason
    assert "420 MiB" in reason
    assert "--batch N" in reason

    assert [len(g) for g in group_runs(large, 4, memory=2**40).groups] == [4], "an explicit size groups them"
    small = _specs(tmp_path, "sparse_signal_d200", 4)
    assert [len(g) for g in group_runs(small, "auto", memory=2**40).groups] == [4]


def test_a_group_beyond_its_share_of_memory_is_split_and_the_split_said(tmp_path: Path) -> None:
    specs = _specs(tmp_path, "sparse_signal_d200", 8)  # a member needs ~4.2 MiB
    grouping = group_runs(specs, 8, memory=4 * 13 * 2**20)  # a group may take 13 MiB: 3 members
    assert [len(g) for g in grouping.groups] == [3, 2, 3]
    assert sum(len(g) for g in grouping.groups) + len(grouping.alone) == 8
    [split] = grouping.splits
    assert "8 runs of sparse_signal_d200" in split
    assert "split into 3 groups" in split
    assert "MiB" in split
