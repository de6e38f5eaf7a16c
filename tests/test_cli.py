"""The command table, in this process and without a recipe: every command carries its handler, the
choices the parser offers are the schema's, the flags declared once keep each command's defaults,
and `run` hands the handler its parsed args and the command line."""
from __future__ import annotations

import argparse

import pytest

from rtune_ds import cli
from rtune_ds.analysis.pairs import FLAGS
from rtune_ds.config.schema import RecyclingMethod


def commands(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every runnable command under `p`."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, p
    for action in subs:
        for name, child in action.choices.items():
            yield from commands(child, (*path, name))


def test_every_command_has_a_handler():
    found = {words: p.get_default("handler") for words, p in commands(cli.parser())}
    assert len(found) >= 20 and ("analyze", "similarity") in found
    assert [words for words, handler in found.items() if not callable(handler)] == []


RECYCLE = ["recycle", "--bundle", "b", "--base", "v1", "--config", "c.yaml"]


def test_method_and_resume_are_choices(capsys):
    args = cli.parse([*RECYCLE, "--method", "init+distill", "--resume", "auto", "seed=2"])
    assert (args.method, args.overrides) == (RecyclingMethod.INIT_DISTILL, ["seed=2"])
    for bad, shown in ((["--method", "finetune"], "'compat', 'init', 'distill', 'init+distill'"),
                       (["--method", "init", "--resume", "yes"], "'auto', 'required'")):
        with pytest.raises(SystemExit) as err:
            cli.parse([*RECYCLE, *bad])
        assert err.value.code == 2 and shown in capsys.readouterr().err


@pytest.mark.parametrize("command, want", [
    ("throughput", {"steps": 30, "warmup": 5, "repeats": 3}),
    ("compare", {"steps": 30, "warmup": 5}),
    ("padding", {"steps": 20, "warmup": 3, "repeats": 3}),
    ("mlm", {"steps": 20, "warmup": 3, "repeats": 3}),
    ("distill", {"steps": 20, "repeats": 1}),
    ("mapping", {"repeats": 7}),
])
def test_bench_timing_flags_keep_each_benchmarks_defaults(command, want):
    parsers = dict(commands(cli.parser()))
    got = {k: parsers[("bench", command)].get_default(k) for k in ("steps", "warmup", "repeats")}
    assert got == {**dict.fromkeys(("steps", "warmup", "repeats")), **want}


def test_pair_flags_have_one_home():
    pair = ["--a", "A", "--base-a", "v0", "--bundle-b", "B", "--base-b", "v1"]
    args = cli.parse(["analyze", "distance", *pair])
    assert {k: getattr(args, k) for k in FLAGS} == {
        "a": "A", "base_a": "v0", "b": "B", "base_b": "v1", "control_a": None,
        "control_base_a": None, "control_b": None, "control_base_b": None}
    with pytest.raises(SystemExit):
        cli.parse(["analyze", "distance", *pair[2:]])  # bundle A is required


def test_run_hands_the_handler_its_args_and_the_command_line(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_lineage", lambda args, command: seen.append((args.path, command)))
    cli.run(["lineage", "runs/my run"])
    assert seen == [("runs/my run", "rtune lineage 'runs/my run'")]
