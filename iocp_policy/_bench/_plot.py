"""``--plot out.png``: every loop against asyncio, one bar per loop and workload."""

from __future__ import annotations

from typing import Any

from . import _loops
from ._results import Results
from ._stats import Summary, summarize

COLORS = {"asyncio": "#9e9e9e", "uvloop": "#1f77b4", "rloop": "#2ca02c", _loops.NATIVE: "#d62728",
          "emulated": "#ff7f0e"}


def _bars(s: dict[tuple[str, str], Summary], workload: str, loop: str, base: Summary | None,
          per_cpu: bool) -> tuple[float, float, float] | None:
    """(ratio, lower error, upper error) of loop over the asyncio median, or None."""
    mine = s.get((workload, loop))
    if mine is None or base is None:
        return None
    med, lo, hi = ((mine.per_cpu_median, mine.per_cpu_low, mine.per_cpu_high) if per_cpu
                   else (mine.median, mine.low, mine.high))
    ref = base.per_cpu_median if per_cpu else base.median
    if med is None or lo is None or hi is None or not ref:
        return None
    return med / ref, (med - lo) / ref, (hi - med) / ref


def plot(results: Results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    s = summarize(results)
    loops = results.loop_names()
    workloads = [w["name"] for w in results.workloads if any((w["name"], n) in s for n in loops)]
    if "asyncio" not in loops or not workloads:
        raise ValueError("the plot compares against asyncio: run it with the asyncio loop included")
    height = max(4.0, 0.13 * len(workloads) * len(loops) + 2.0)
    fig, axes = plt.subplots(1, 2, figsize=(15, height), sharey=True)
    group = 0.8 / len(loops)
    for ax, per_cpu, title in ((axes[0], False, "throughput"), (axes[1], True, "throughput per CPU-second")):
        for i, loop in enumerate(loops):
            ys: list[float] = []
            xs: list[float] = []
            errs: list[list[float]] = [[], []]
            for j, w in enumerate(workloads):
                y = j - 0.4 + group * (i + 0.5)
                bar = _bars(s, w, loop, s.get((w, "asyncio")), per_cpu)
                if bar is None:
                    if (w, loop) in s:
                        ax.text(1.0, y, f" {loop}: failed", va="center", fontsize=7, color="#555555")
                    continue
                ys.append(y)
                xs.append(bar[0])
                errs[0].append(bar[1])
                errs[1].append(bar[2])
            label = f"{loop} (ours)" if results.loops[loop].get("ours") else loop
            kwargs: dict[str, Any] = {"color": COLORS.get(loop, "#8c564b"), "label": label}
            # bars grow from 1 (= asyncio): right when faster, left when slower
            ax.barh(ys, [x - 1.0 for x in xs], left=1.0, height=group * 0.9, xerr=errs,
                    error_kw={"elinewidth": 0.7, "capsize": 1.5}, **kwargs)
            for x, y, hi in zip(xs, ys, errs[1], strict=True):
                ax.text(max(x + hi, 1.0), y, f" {x:.2f}", va="center", fontsize=6)
        for j in range(1, len(workloads), 2):  # shade every other workload
            ax.axhspan(j - 0.5, j + 0.5, color="#f0f0f0", zorder=0)
        ax.set_ylim(len(workloads) - 0.5, -0.5)  # first workload on top
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel(f"{title} relative to asyncio (log scale; 1 = asyncio)")
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.set_title(title)
    axes[0].set_yticks(range(len(workloads)), workloads, fontsize=8)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 1.0 - 0.75 / height),
               fontsize=8, ncols=len(loops), frameon=False)
    m = results.machine
    rounds = results.config.get("rounds", "?")
    fig.suptitle(f"iocp-policy bench: median of {rounds} rounds, whiskers min-max\n"
                 f"{m.get('cpu')} ({m.get('cores')} cores), {m.get('kernel')}, {m.get('python')}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1.0 - 0.85 / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)
