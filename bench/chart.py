"""Bar chart of a ``run_bench.py`` result file: ``chart.py RESULTS.json OUT.png``.

Runs in bench/.tools/plot-venv (matplotlib stays out of the project's requirements).
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display here
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"dag": "#d62728", "rclone": "#1f77b4", "azcopy": "#ff7f0e", "az": "#2ca02c",
           "ceiling": "#7f7f7f"}


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}"
        n /= 1024
    return f"{n} B"


def main(source: str, target: str) -> int:
    record = json.loads(open(source).read())
    results = record["results"]
    fig, axes = plt.subplots(1, len(results), figsize=(max(7, 5 * len(results)), 4.8), squeeze=False)
    for ax, (case, res) in zip(axes[0], results.items()):
        names = list(res["seconds"])
        seconds = [res["seconds"][n] for n in names]
        bars = ax.bar(names, seconds, color=[COLOURS.get(n, "#999999") for n in names])
        ax.bar_label(bars, fmt="%.2f")
        ax.set_title(f"{case}: {res['files']:,} files, {_size(res['bytes'])}")
        ax.set_ylabel(f"seconds (median of {record['runs']}; lower is better)")
        if "dag_vs_best_peer" in res:
            ratios = [f"{k} {res[k]:.2f}" for k in ("dag_vs_best_peer", "dag_vs_ceiling") if k in res]
            ax.set_xlabel(", ".join(ratios))
    fig.suptitle(f"cloud-backup upload into Azurite ({record['machine']['cpus']} cores), "
                 f"{record['when']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
