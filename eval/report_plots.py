"""The report's plots, as base64 PNGs for report.html (matplotlib, Agg backend)."""
from __future__ import annotations

import base64
import io

from saferounds.data.risk import RISK_CATEGORIES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _category_plot(plt, trend: list[dict]) -> str:
    """Violation % per LLaMA 2 risk category, one bar per version, with 95% Wilson intervals."""
    versions = [m["version"] for m in trend]
    cats = list(RISK_CATEGORIES) + (["other"] if any("other" in m["safety"]["by_category"] for m in trend) else [])
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / max(1, len(versions))
    for j, m in enumerate(trend):
        vals = [100 * ((m["safety"]["by_category"].get(c) or {}).get("rate") or 0.0) for c in cats]
        errs = []
        for c in cats:
            r = m["safety"]["by_category"].get(c) or {"rate": 0.0, "ci95": [0, 0]}
            lo, hi = r.get("ci95", [0, 0])
            rate = r.get("rate") or 0.0
            errs.append((100 * max(0.0, rate - lo), 100 * max(0.0, hi - rate)) if r.get("n") else (0, 0))
        xs = [i + j * width for i in range(len(cats))]
        ax.bar(xs, vals, width, label=m["version"], yerr=list(zip(*errs)) if errs else None, capsize=2)
    ax.set_xticks([i + width * (len(versions) - 1) / 2 for i in range(len(cats))])
    ax.set_xticklabels([c.replace("_", " ") for c in cats], fontsize=8)
    ax.set_ylabel("violation %")
    ax.set_title("Violation % by risk category (95% Wilson CI)")
    ax.legend(fontsize=7)
    return _png(fig)


def _false_refusal_plot(plt, trend: list[dict]) -> str:
    versions = [m["version"] for m in trend]
    fig, ax = plt.subplots(figsize=(6, 3))
    for key, label in (("borderline", "borderline prompts"), ("helpful", "helpful prompts")):
        ys = [100 * (m["safety"]["false_refusal"][key]["rate"] or 0.0) for m in trend]
        ax.plot(versions, ys, marker="o", label=label)
    ys = [100 * (m["safety"]["violation_rate"] or 0.0) for m in trend]
    ax.plot(versions, ys, marker="s", linestyle="--", label="violation (unsafe prompts)")
    ax.set_ylabel("%")
    ax.set_ylim(bottom=0)
    ax.set_title("False refusal and violation per version")
    ax.legend(fontsize=7)
    return _png(fig)


def _tradeoff_plot(plt, trend: list[dict]) -> str | None:
    pts = [(m["version"], m["safety"]["violation_rate"], m["helpfulness"]["mean_score"]) for m in trend]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot([100 * p[1] for p in pts], [p[2] for p in pts], marker="o")
    for v, x, y in pts:
        ax.annotate(v, (100 * x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("violation % (lower is safer)")
    ax.set_ylabel("mean helpfulness RM score")
    ax.set_title("Helpfulness against safety")
    return _png(fig)


def _score_plot(plt, score_sets: dict[str, dict[str, list[float]]]) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, key in zip(axes, ("helpfulness", "safety")):
        for v, s in score_sets.items():
            if s.get(key):
                ax.hist(s[key], bins=20, alpha=0.5, label=v)
        ax.set_title(f"{key} RM scores ({'unsafe' if key == 'safety' else 'borderline + helpful'} prompts)",
                     fontsize=9)
        ax.legend(fontsize=7)
    return _png(fig)


def _max_of_k_plot(plt, max_of_k: list[dict]) -> str:
    fig, ax = plt.subplots(figsize=(5, 3))
    ks = [p["k"] for p in max_of_k]
    ax.plot(ks, [p["max"] for p in max_of_k], marker="o", label="max of k")
    ax.plot(ks, [p["median"] for p in max_of_k], marker="o", label="median of k")
    ax.set_xticks(ks)
    ax.set_xlabel("k samples")
    ax.set_ylabel("reward")
    ax.set_title("Max-of-K (LLaMA 2 Fig. 7)")
    ax.legend(fontsize=7)
    return _png(fig)


def _ppo_plot(plt, ppo: dict) -> str:
    """PPO per step: KL to the reference (with ppo.max_kl), the gated score, response length, refusal rate."""
    steps = ppo["steps"]
    xs = [r["step"] for r in steps]
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.8))
    panels = (("kl", "KL (nats / response)"), ("score", "gated score logit(R_c)"),
              ("response_length", "response tokens"), ("refusal_rate", "refusal rate of rollouts"))
    for ax, (key, title) in zip(axes, panels):
        ax.plot(xs, [r.get(key) if r.get(key) is not None else float("nan") for r in steps], marker="o", markersize=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("PPO step", fontsize=8)
    if ppo.get("max_kl") is not None:
        axes[0].axhline(ppo["max_kl"], color="red", linestyle="--", linewidth=1, label="ppo.max_kl")
        axes[0].legend(fontsize=7)
    axes[3].set_ylim(0, 1)
    return _png(fig)


def make_plots(trend: list[dict], score_sets: dict[str, dict[str, list[float]]], max_of_k: list | None,
               ppo: dict | None = None) -> dict:
    """title -> base64 PNG. trend: metrics dicts of all versions (oldest first); score_sets:
    version -> {"helpfulness": [...], "safety": [...]} raw RM scores; ppo: metrics.json's `ppo` (step log)."""
    plt = _pyplot()
    plots = {}
    if trend:
        plots["Violation % by category per version"] = _category_plot(plt, trend)
        plots["False refusal per version"] = _false_refusal_plot(plt, trend)
        tradeoff = _tradeoff_plot(plt, trend)
        if tradeoff:
            plots["Helpfulness against safety"] = tradeoff
    if any(s.get("helpfulness") or s.get("safety") for s in score_sets.values()):
        plots["Score distributions per version"] = _score_plot(plt, score_sets)
    if max_of_k:
        plots["Max-of-K curve"] = _max_of_k_plot(plt, max_of_k)
    if ppo and ppo.get("steps"):
        plots["PPO per step"] = _ppo_plot(plt, ppo)
    return plots


def distill_plot(rows: list[dict]) -> str:
    """LLaMA 2 Fig. 16 analogue: safety-RM scores of the plain answers against the preprompted (distilled) ones."""
    plt = _pyplot()
    plain, pre = [r["score_plain"] for r in rows], [r["score_pre"] for r in rows]
    lo, hi = min(plain + pre), max(plain + pre)
    bins = [lo + (hi - lo) * i / 20 for i in range(21)] if hi > lo else 20
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(plain, bins=bins, alpha=0.55, label="plain answer (no preprompt)")
    ax.hist(pre, bins=bins, alpha=0.55, label="with safety preprompt (distilled)")
    ax.set_xlabel("safety RM score")
    ax.set_ylabel("prompts")
    ax.set_title("Context distillation: safety RM scores (LLaMA 2 Fig. 16)", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)
