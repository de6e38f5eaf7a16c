"""`rtune bench recycle-all`: a library of N bundles (delta / LoRA / IA3 in rotation, four tasks of
2-6 labels) tuned on a preset base v0, recycled onto a new version v1 by one `rtune recycle-all`
launch, against N separate `rtune recycle --method compat` launches (the same ranks and DeepSpeed
JSON); prints JSON.

- total_s: the wall time of the recycle-all launch (launcher, imports, planning, loads, scoring,
  report: everything);
- base_load_s: the library's loads of the base (from recycle_all.json: load + engine start; one
  per adapter type), per_bundle_s: each bundle's apply + score (the time it is on the base);
- ratio_to_work = total_s / (base_load_s + Σ per_bundle_s): what the launch costs beyond loading
  once and scoring (target <= 1.25);
- ratio_to_separate = total_s / Σ separate launch wall times (target <= 0.2).

The inputs are made here with random weights (jobs.synthetic_library) and removed afterwards.
"""
from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

from rtune_ds import dist
from rtune_ds.errors import ConfigError, RunError
from rtune_ds.jobs import benchmark
from rtune_ds.jobs.synthetic_library import make_library
from rtune_ds.launch import launcher_command, run_launch

TARGETS = {"ratio_to_work": 1.25, "ratio_to_separate": 0.2}


def timed_launch(nproc: int, args: list[str], what: str) -> float:
    started = time.perf_counter()
    run_launch(launcher_command(nproc, args), what)
    return time.perf_counter() - started


def run(preset: str, bundles: int, nproc: int, ds_config: str | None, examples: int,
        max_len: int, out: str, keep_inputs: bool = False) -> dict:
    benchmark.check_llama_preset(preset)
    if bundles < 1 or examples < 8:
        raise ConfigError(f"--bundles {bundles} / --examples {examples}: need >= 1 and >= 8")
    out_dir = Path(out)
    benchmark.new_out(out, out_dir)
    ds = ["--ds-config", ds_config] if ds_config else []
    dist.init()  # the bundle writer runs on one rank here
    v0, v1, shelf = make_library(preset, bundles, out_dir / "inputs", examples, max_len)

    total_s = timed_launch(nproc, ["recycle-all", "--bundles", str(shelf), "--base", str(v1),
                                   "--out", str(out_dir / "library"), *ds], "recycle-all")
    library = json.loads((out_dir / "library" / "recycle_all.json").read_text())
    scored = [b for b in library["bundles"] if b["status"] == "scored"]
    if len(scored) != bundles:
        raise RunError(f"bench: {bundles - len(scored)} bundle(s) were refused: "
                          f"{[b.get('reason') for b in library['bundles'] if b['status'] != 'scored']}")
    per_bundle_s = [b["timing_s"]["apply"] + b["timing_s"]["score"] for b in scored]
    restore_s = [b["timing_s"]["restore"] for b in scored]
    base_load_s = sum(load["load_s"] for load in library["library"]["loads"])

    separate_s = []
    for bundle in sorted(shelf.iterdir()):
        config = json.loads((bundle / "lineage.json").read_text())["config"]
        config["run_dir"] = str(out_dir / "separate" / bundle.name)
        job = out_dir / "separate" / f"{bundle.name}.json"
        job.parent.mkdir(parents=True, exist_ok=True)
        job.write_text(json.dumps(config))
        separate_s.append(timed_launch(nproc, ["recycle", "--config", str(job), "--method",
                                               "compat", "--bundle", str(bundle), "--base",
                                               str(v1), *ds], f"recycle {bundle.name}"))
        one = json.loads((Path(config["run_dir"]) / "compat.json").read_text())
        lib = json.loads((out_dir / "library" / "compat" / bundle.name / "compat.json").read_text())
        if (one["dev"]["accuracy"] != lib["dev"]["accuracy"]
                or abs(one["dev"]["loss"] - lib["dev"]["loss"]) > 1e-5):
            raise RunError(f"bench: {bundle.name}: the library scored dev {lib['dev']}, the "
                           f"separate run {one['dev']}")

    report = {"bench": "recycle-all", "preset": preset, "bundles": bundles, "nproc": nproc,
              "zero_stage": library["zero_stage"], "dev_test_examples": examples,
              "max_len": max_len,
              "loads": [{k: v for k, v in load.items() if not k.startswith("digest_")}
                        for load in library["library"]["loads"]],
              "base_digest_unchanged": all(load["digest_before"] == load["digest_after"]
                                           for load in library["library"]["loads"]),
              "total_s": total_s, "library_phases_s": library["phases_s"],
              "base_load_s": base_load_s,
              "per_bundle_s_median": statistics.median(per_bundle_s),
              "per_bundle_s_sum": sum(per_bundle_s),
              "restore_s_median": statistics.median(restore_s),
              "separate_s_median": statistics.median(separate_s),
              "separate_s_sum": sum(separate_s),
              "ratio_to_work": total_s / (base_load_s + sum(per_bundle_s)),
              "ratio_to_separate": total_s / sum(separate_s),
              "targets": TARGETS, "same_dev_accuracy_as_separate": True}
    if not keep_inputs:
        shutil.rmtree(out_dir / "inputs")
    return benchmark.publish(report, out_dir / "bench_recycle_all.json")
