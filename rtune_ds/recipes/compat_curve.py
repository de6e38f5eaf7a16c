"""`rtune analyze compat`: one bundle scored with no training on each of a series of bases (say the
exports of a continual-pretraining run), one `rtune recycle --method compat` after another in this
process, as a curve (JSON, PNG, TensorBoard)."""
from __future__ import annotations

from pathlib import Path

from rtune_ds import dist
from rtune_ds.config.checks import require_dev
from rtune_ds.config.schema import RecyclingMethod
from rtune_ds.io import pyplot, save_figure, save_json
from rtune_ds.jobs import recycling
from rtune_ds.recycling.mapping import Policy
from rtune_ds.train.monitor import Monitor


def base_label(base: str) -> str:
    """'v1/final' rather than 'final'."""
    return "/".join(Path(base).resolve().parts[-2:])


def compat_curve(bundle: str, bases: list[str], config: str | None, overrides: list[str],
                 out: str, policy: Policy, command: str) -> list[dict]:
    """Compat of one bundle on each base in order (the first may be the base it was tuned on)."""
    out_dir, points = Path(out), []
    for i, base in enumerate(bases):
        cfg, where = recycling.bundle_job_config(
            Path(bundle), config, overrides,
            out_dir / f"{i:02d}_{base_label(base).replace('/', '_')}", base)
        require_dev(cfg, where)
        r = recycling.prepare(cfg, where, None, bundle, RecyclingMethod.COMPAT, policy,
                              force_same_base=True)
        result = recycling.compat(r, recycling.start(r))
        points.append({"index": i, "base": str(Path(base).resolve()),
                       "dev": result["dev"], "test": result.get("test")})
    if dist.is_main():
        monitor = Monitor(out_dir, 0, len(points))
        for p in points:
            monitor.log(p["index"], {f"compat_curve/dev/{k}": v for k, v in p["dev"].items()})
        monitor.close()
        save_json({"bundle": str(Path(bundle).resolve()), "points": points},
                  out_dir / "compat_curve.json")
        plot_curve(points, out_dir / "compat_curve.png")
        print(f"rtune: compat curve -> {out_dir / 'compat_curve.json'}")
    return points


def plot_curve(points: list[dict], path: Path) -> None:
    plt = pyplot()
    metric = "accuracy" if "accuracy" in points[0]["dev"] else "loss"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([p["index"] for p in points], [p["dev"][metric] for p in points], marker="o")
    ax.set_xticks([p["index"] for p in points],
                  [base_label(p["base"]) for p in points], rotation=30, ha="right")
    ax.set_ylabel(f"dev {metric} (compat, no training)")
    ax.set_title("Compatibility of one bundle across base versions")
    save_figure(fig, path)
