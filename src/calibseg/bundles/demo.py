"""End-to-end demo: synthetic data → three bundles → train → predict → evaluate → compare.

The three losses differ only by the mL1-ACE term (baseline Dice+CE, + hard ACE, + soft ACE);
everything else (data, split, network, schedule, seed) is identical. Metrics come from
``calibseg.evaluate.evaluate_run`` on the test split: per case, Dice and ECE / ACE / MCE are
averaged over the foreground classes; the table shows their mean over test cases (macro).
With several seeds the table shows mean ± std over seeds, and a two-sided Wilcoxon
signed-rank test (scipy.stats.wilcoxon) pairs each ACE loss with the baseline over the test
cases, on per-case ACE averaged over the seeds (cases are the independent units).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from calibseg import storage

__all__ = ["DemoSettings", "DEMO_LOSSES", "run_demo", "case_metrics"]

logger = logging.getLogger(__name__)

DEMO_LOSSES: tuple[str, ...] = ("baseline_dice_ce", "hardl1ace_dice_ce", "softl1ace_dice_ce")
METRICS: tuple[str, ...] = ("dice", "ece", "ace", "mce")


@dataclass
class DemoSettings:
    """Sizes of the demo: synthetic data, network width, epochs, seeds."""

    n_cases: int = 24
    shape: tuple[int, int, int] = (48, 48, 32)
    roi_size: tuple[int, int, int] = (32, 32, 32)
    init_filters: int = 8
    blocks_down: tuple[int, ...] = (1, 1, 1, 1)
    split_fractions: tuple[float, float, float] = (0.5, 0.125, 0.375)
    max_epochs: int = 64
    learning_rate: float = 2.0e-3
    val_interval: int = 4
    seeds: tuple[int, ...] = (0,)
    data_seed: int = 0
    losses: tuple[str, ...] = DEMO_LOSSES
    extra_overrides: dict[str, Any] = field(default_factory=dict)

    def overrides(self) -> dict[str, Any]:
        return {
            "common#roi_size": list(self.roi_size),
            "common#network_def#init_filters": self.init_filters,
            "common#network_def#blocks_down": list(self.blocks_down),
            "data#split_fractions": list(self.split_fractions),
            "train#max_epochs": self.max_epochs,
            "train#learning_rate": self.learning_rate,
            "train#val_interval": self.val_interval,
            **self.extra_overrides,
        }


def case_metrics(eval_dir: str) -> Any:
    """Per-case metrics from ``<eval_dir>/cases.csv``: DataFrame [case × dice/ece/ace/mce].

    Each value is the mean over the foreground classes (background excluded) that are
    defined for the case (NaN entries skipped).
    """
    import io

    import pandas as pd

    df = pd.read_csv(io.StringIO(storage.read_text(storage.join(eval_dir, "cases.csv"))))
    classes = list(dict.fromkeys(df["class"]))
    fg = df[(df["class"] != classes[0]) & df["metric"].isin(METRICS)]
    return fg.groupby(["case", "metric"])["value"].mean().unstack("metric")[list(METRICS)]


def summarise(per_case: dict[str, Any]) -> tuple[dict, dict]:
    """Table and paired tests from per-case metrics.

    ``per_case[loss]``: DataFrame indexed by (seed, case) with columns dice/ece/ace/mce; the
    first loss is the baseline. Returns ``table[loss][metric] = (mean, std)`` over seeds of
    the per-seed mean over cases (std 0 for one seed), and ``tests[loss]`` = two-sided
    Wilcoxon signed-rank p-value of per-case ACE (mean over seeds) against the baseline's,
    paired by case (None with one seed or fewer than 2 differing pairs).
    """
    import numpy as np
    from scipy.stats import wilcoxon

    table: dict[str, dict[str, tuple[float, float]]] = {}
    for loss, df in per_case.items():
        by_seed = df.groupby(level="seed").mean()
        table[loss] = {
            m: (float(by_seed[m].mean()), float(by_seed[m].std(ddof=0))) for m in METRICS
        }
    losses = list(per_case)
    n_seeds = per_case[losses[0]].index.get_level_values("seed").nunique() if losses else 0
    tests: dict[str, float | None] = {}
    for loss in losses[1:]:
        tests[loss] = None
        if n_seeds < 2:
            continue
        a = per_case[losses[0]]["ace"].groupby(level="case").mean()
        a, b = a.align(per_case[loss]["ace"].groupby(level="case").mean(), join="inner")
        a, b = a.to_numpy(), b.to_numpy()
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() >= 2 and np.any(a[ok] != b[ok]):
            tests[loss] = float(wilcoxon(a[ok], b[ok]).pvalue)
    return table, tests


def run_demo(out: str = "demo_out", settings: DemoSettings | None = None) -> dict[str, Any]:
    """Run the demo under ``out``; return {"table", "per_case", "tests", "figures", "seconds"}.

    ``table[loss][metric]`` = (mean, std) over seeds of the macro (mean over test cases)
    value; ``per_case[loss]`` = DataFrame of per-case values indexed by (seed, case);
    ``tests[loss]`` = two-sided Wilcoxon p-value of per-case ACE (mean over seeds) against the
    baseline's, over test cases (None with one seed or fewer than 2 differing pairs);
    ``figures`` = dataset reliability diagram paths.
    """
    import pandas as pd

    from calibseg.bundles import create_bundle, load_bundle
    from calibseg.bundles.runner import predict, train
    from calibseg.data.synthetic import generate
    from calibseg.evaluate import evaluate_run

    s = settings or DemoSettings()
    t0 = time.perf_counter()
    data_dir = storage.join(out, "data")
    meta_path = storage.join(data_dir, "dataset.json")
    if not storage.exists(meta_path):
        generate(data_dir, n_cases=s.n_cases, shape=s.shape, seed=s.data_seed)
    meta = storage.read_json(meta_path)
    have = (meta.get("numTraining"), tuple(meta.get("shape", ())), meta.get("seed"))
    if have != (s.n_cases, tuple(s.shape), s.data_seed):
        raise ValueError(
            f"{data_dir} holds other synthetic data ({have[0]} cases of {have[1]}, seed {have[2]}); "
            "use another --out."
        )
    per_case: dict[str, Any] = {}
    figures: dict[str, list[str]] = {}
    for loss in s.losses:
        bundle = create_bundle(
            "synthetic",
            loss,
            out=storage.join(out, "bundles"),
            data_root=data_dir,
            overrides=s.overrides(),
        )
        frames = []
        for seed in s.seeds:
            run_name = f"seed_{seed}"
            train(bundle, seed=seed)  # resumes / returns at once when already trained
            eval_dir = storage.join(bundle, run_name, "evaluation")
            if not storage.exists(storage.join(eval_dir, "cases.csv")):
                predict(bundle, seed=seed, checkpoint=load_bundle(bundle).get("pred_checkpoint"))
                cfg = load_bundle(bundle).get  # configs/inference_eval.yaml
                evaluate_run(
                    bundle,
                    run_name=run_name,
                    regions=bool(cfg("eval_regions", False)),
                    num_bins=int(cfg("eval_num_bins", 20)),
                    case_figures=bool(cfg("eval_case_figures", False)),
                    progress=False,
                )
            frames.append(case_metrics(eval_dir).assign(seed=seed))
            figures.setdefault(loss, []).append(
                storage.join(eval_dir, "dataset_reliability_diagram.png")
            )
        per_case[loss] = pd.concat(frames).reset_index().set_index(["seed", "case"])

    table, tests = summarise(per_case)
    return {
        "table": table,
        "per_case": per_case,
        "tests": tests,
        "figures": figures,
        "seconds": time.perf_counter() - t0,
    }
