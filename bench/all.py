"""Every benchmark, and a one-page summary: ``bench/out/summary.md``.

    python -m bench.all --quick        # reduced: 300 images per dataset, fewer grid points (< 15 min, 2 CPUs)
    python -m bench.all                # every image

Runs bench.reproduce, bench.policies and bench.calibrate on the simulator,
jina15 (pokemon15, by source) and flowers17 (flowers17, by split), and
bench.speed on jina15, loading the model once and encoding each image once
(image cache under ``--cache-dir``). ``--data``/``--system`` replace the two
real datasets by one pair.

Unless ``--model simulator`` or ``--no-probe``, it also runs ``bench.probe all``:
the attribute probe (trained here on Gen 2–3 sprites; not CLIP) is trained into
OUT/probe if absent and evaluated on Gen 1 (section "attribute probe (trained
here)"; ``--quick`` uses 300 images per dataset).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.probe.data import data_available
from systems import load_system

from . import calibrate, policies, reproduce, speed
from .lib import harness as C
from .probe import cli as probe

PAIRS = (("jina15", "pokemon15", "source"), ("flowers17", "flowers17", "split"))


def _rel(out: Path, path: Path) -> str:
    return str(path.relative_to(out))


def _show(path: Path) -> str:
    """A path as typed from the repository root where it lies inside it."""
    try:
        return str(path.resolve().relative_to(C.REPO))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="offline", help="model string (default: the offline stand-in, NOT CLIP)")
    ap.add_argument("--data", default=None, help="one dataset instead of jina15 and flowers17")
    ap.add_argument("--system", default=None, help="the system for --data")
    ap.add_argument("--by", default=None, help="breakdown column for --data")
    ap.add_argument("--out", default=str(C.DEFAULT_OUT))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None, help="default: OUT/cache")
    ap.add_argument("--quick", action="store_true", help="reduced sizes and grids (< 15 min on 2 CPU cores)")
    ap.add_argument("--limit", type=int, default=None, help="images per dataset (default: 300 with --quick, all)")
    ap.add_argument("--sim-images", type=int, default=None, help="simulator images (default: 1000 with --quick, 4000)")
    ap.add_argument("--no-probe", action="store_true", help="skip the attribute probe (trained here; not CLIP)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out)
    cache = args.cache_dir or str(out / "cache")
    limit = args.limit if args.limit is not None else (300 if args.quick else None)
    sim_images = args.sim_images or (1000 if args.quick else 4000)
    taus = (0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0) if args.quick else policies.TAUS
    n_budgets = 7 if args.quick else 12
    cal_taus = (0.5, 0.7, 0.9, 0.95, 0.99, 1.0) if args.quick else calibrate.TAUS
    pairs = [(args.data, args.system or "pokemon15", args.by)] if args.data else list(PAIRS)
    cmd = C.command_line("bench.all", argv)
    timings: dict[str, float] = {}

    print(f"[bench.all] loading {C.model_label(args.model)}", flush=True)
    encoder = C.load_model(args.model) if args.model != C.SIMULATOR else None
    preps: dict[str, C.Prepared] = {}
    preps["simulator"] = C.prepare_simulated(load_system("pokemon15"), images=sim_images, seed=args.seed,
                                             **{k: C.SIM[k] for k in ("margin", "name_margin", "noise",
                                                                      "wrong_rate", "logit_scale")})
    by_of = {"simulator": None}
    for data, system, by in pairs:
        t0 = time.perf_counter()
        if encoder is None:
            continue
        print(f"[bench.all] encoding {data} (limit {limit})", flush=True)
        preps[data] = C.prepare_encoded(encoder, load_system(system), data, limit=limit, seed=args.seed, split=None,
                                        cache_dir=cache, model=args.model)
        by_of[data] = by
        timings[f"prepare {data}"] = time.perf_counter() - t0

    res: dict[str, dict[str, Any]] = {"reproduce": {}, "policies": {}, "calibrate": {}}
    cmds: list[str] = []
    lim = f" --limit {limit}" if limit else ""

    def std_cmd(mod: str, name: str, extra: str = "") -> str:
        if name == "simulator":
            return f"python -m bench.{mod} --model simulator --images {sim_images} --seed {args.seed}{extra}"
        sysname = next(s for d, s, _ in pairs if d == name)
        return (f"python -m bench.{mod} --model {args.model} --data {name} --system {sysname}{lim} "
                f"--seed {args.seed}{extra}")

    for name, prep in preps.items():
        t0 = time.perf_counter()
        print(f"[bench.all] reproduce {name}", flush=True)
        by = by_of.get(name)
        c = std_cmd("reproduce", name, f" --by {by}" if by else "") + f" --out {_show(out / 'reproduce' / name)}"
        res["reproduce"][name] = reproduce.run(prep, out / "reproduce" / name, seed=args.seed, by=by, command=c)
        cmds.append(c)
        timings[f"reproduce {name}"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        print(f"[bench.all] policies {name}", flush=True)
        c = std_cmd("policies", name) + f" --out {_show(out / 'policies' / name)}"
        res["policies"][name] = policies.run(prep, out / "policies" / name, seed=args.seed, taus=taus,
                                             n_budgets=n_budgets, command=c)
        cmds.append(c)
        timings[f"policies {name}"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        print(f"[bench.all] calibrate {name}", flush=True)
        cal_prep, extra = prep, ""
        if name == "simulator":  # a deliberately mis-set λ and noisy answers, so there is something to fix
            cal_prep = C.prepare_simulated(prep.system, images=sim_images, seed=args.seed, margin=C.SIM["margin"],
                                           name_margin=C.SIM["name_margin"], noise=C.SIM["noise"], wrong_rate=0.1,
                                           logit_scale=400.0)
            extra = " --wrong-rate 0.1 --logit-scale 400"
        c = std_cmd("calibrate", name, extra) + f" --out {_show(out / 'calibrate' / name)}"
        res["calibrate"][name] = calibrate.run(cal_prep, out / "calibrate" / name, seed=args.seed, taus=cal_taus,
                                               command=c)
        cmds.append(c)
        timings[f"calibrate {name}"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    speed_name = next((d for d, _, _ in pairs if d in preps), "simulator")
    print(f"[bench.all] speed {speed_name}", flush=True)
    images = None
    if encoder is not None:
        from engine.run.datasets import load_dataset

        images = [it.path for it in load_dataset(C.resolve_data(speed_name), limit=256, seed=args.seed).items]
    c = std_cmd("speed", speed_name) + f" --out {_show(out / 'speed')}"
    res["speed"] = speed.run(preps[speed_name], out / "speed", encoder=encoder, images=images, command=c)
    cmds.append(c)
    timings[f"speed {speed_name}"] = time.perf_counter() - t0

    res["probe"] = _probe(args, out, cache, limit, cmds, timings)

    wall = time.perf_counter() - t_start
    path = out / "summary.md"
    path.write_text(_summary(out, res, preps, cmd, cmds, timings, wall, args), encoding="utf-8")
    print(f"[bench.all] wrote {path} in {wall:.0f} s", flush=True)
    return path


def _probe(args, out: Path, cache: str, limit: int | None, cmds: list[str], timings: dict[str, float]):
    """bench.probe all (train into OUT/probe if absent, evaluate on Gen 1), or why it was skipped."""
    if args.no_probe or args.model == C.SIMULATOR:
        return {"skipped": "--no-probe" if args.no_probe else "--model simulator"}
    if not data_available():
        return {"skipped": "../shared/data/pokemon is absent"}
    t0 = time.perf_counter()
    print("[bench.all] attribute probe (trained here; not CLIP)", flush=True)
    folder = out / "probe"
    ev = folder / _probe_eval_dir(args)
    c = (f"python -m bench.probe all --probe {_show(folder)} --eval-out {_show(ev)} --cache-dir {_show(Path(cache))}"
         + (f" --limit {limit}" if limit else "") + (" --quick" if args.quick else ""))
    r = probe.run_all(folder, ev, cache_dir=cache, limit=limit, quick=args.quick, command=c)
    cmds.append(c)
    timings["attribute probe" + (" (trained now)" if r["trained_now"] else "")] = time.perf_counter() - t0
    return r


def _probe_eval_dir(args) -> str:
    """A --quick run writes beside, never over, the full evaluation of `bench.probe eval`."""
    return "eval-quick" if args.quick else "eval"


# --------------------------------------------------------------------------- summary
def _who(name: str, who: str) -> str:
    return name if name == "simulator" else f"{name} ({who})"


def _findings(res: dict[str, Any], preps: dict[str, C.Prepared]) -> list[str]:
    f = []
    for name, r in res["reproduce"].items():
        m = {x["mode"]: x for x in r["modes"]}
        who = C.short_model_label(preps[name].model)
        modes = list(m)
        base, fsum, fbay, ada = (m[k] for k in modes[:4])
        shs = m[modes[4]]
        p_sum = r["mcnemar"][0]["p"]
        f.append(f"{_who(name, who)}: full system (sum) {fsum['accuracy']:.3f} vs baseline {base['accuracy']:.3f} "
                 f"({100 * (fsum['accuracy'] - base['accuracy']):+.1f} pts, McNemar p={C.fmt_p(p_sum)}); "
                 f"shuffled-rules control (sum) {shs['accuracy']:.3f} ± {shs['accuracy_sd']:.3f}, so the real rules "
                 f"{'beat' if fsum['accuracy'] > shs['accuracy'] + 2 * shs['accuracy_sd'] else 'do NOT clearly beat'}"
                 f" the same prompts with meaningless rules (clearly: by more than 2 sd of the control).")
        f.append(f"{_who(name, who)}: adaptive eig τ=0.9 {ada['accuracy']:.3f} at mean Q {ada['mean_q']:.1f} of "
                 f"{preps[name].system.q_total} vs full (Bayes) {fbay['accuracy']:.3f} "
                 f"(McNemar p={C.fmt_p(r['mcnemar'][2]['p'])}); stops: {r['stops_adaptive']}.")
        for col, d in r["by"].items():
            parts = []
            for v, per in d.items():
                parts.append(f"{col}={v}: baseline {per[modes[0]]['accuracy']:.3f}, full (sum) "
                             f"{per[modes[1]]['accuracy']:.3f}, n={per[modes[0]]['n']}")
            f.append(f"{_who(name, who)} by {col}: " + "; ".join(parts) + ".")
    for name, r in res["policies"].items():
        who = C.short_model_label(preps[name].model)
        summ = {x["policy"]: x for x in r["summary"]}
        q_full = preps[name].system.q_total
        e = summ["eig"]
        if not r["informative"]:
            f.append(f"{_who(name, who)}: the full system ({r['full']['accuracy']:.3f}, CI "
                     f"{r['full']['ci95'][0]:.3f}–{r['full']['ci95'][1]:.3f}) is not clearly above guessing "
                     f"(majority class {r['majority_class_rate']:.3f}), so no policy comparison is meaningful here"
                     + (f"; eig's Q within 1 pt ({e['q_within_1pt']:.1f}) is trivial." if e["q_within_1pt"] is not None
                        else "."))
        elif e["q_within_1pt"] is not None:
            f.append(f"{_who(name, who)}: eig reaches full-system accuracy −1 pt at mean Q {e['q_within_1pt']:.1f} = "
                     f"{100 * e['q_within_1pt_frac']:.0f}% of Q_full={q_full}.")
        else:
            f.append(f"{_who(name, who)}: eig never comes within 1 pt of full-system accuracy before asking everything.")
        real = [p for p in summ if p != "oracle"]
        best = max(real, key=lambda p: summ[p]["auc_budget"])
        f.append(f"{_who(name, who)}: best normalised AUC (budget sweep) {best} {summ[best]['auc_budget']:.3f}; eig "
                 f"{e['auc_budget']:.3f}, fixed {summ['fixed']['auc_budget']:.3f}, random "
                 f"{summ['random']['auc_budget']:.3f}, oracle {summ['oracle']['auc_budget']:.3f}.")
    for name, r in res["calibrate"].items():
        who = C.short_model_label(preps[name].model)
        b, a = r["before"]["test"], r["after"]["test"]
        fit = r["fit"]
        f.append(f"{_who(name, who)}: fitted λ {fit['lam_start']:g}→{fit['lam']:.3g}, ε {fit['eps_start']:g}→"
                 f"{fit['eps']:.3g}; test ECE {b['ece']:.3f}→{a['ece']:.3f}, NLL {b['nll']:.3f}→{a['nll']:.3f}, "
                 f"accuracy {b['accuracy']:.3f}→{a['accuracy']:.3f}.")
        p_b = next(p for p in r["before"]["test"]["eig_curve"] if p["tau"] == 0.9)
        p_a = next(p for p in r["after"]["test"]["eig_curve"] if p["tau"] == 0.9)
        f.append(f"{_who(name, who)}: at τ=0.9, eig's confidence at stop {p_b['mean_conf_at_stop']:.3f} vs accuracy "
                 f"{p_b['accuracy']:.3f} before; {p_a['mean_conf_at_stop']:.3f} vs {p_a['accuracy']:.3f} after "
                 f"(mean Q {p_b['mean_q']:.1f}→{p_a['mean_q']:.1f}).")
    s = res["speed"]
    name = C.short_model_label(s["meta"]["model"])
    for mode, e in s["engine"].items():
        if "model_over_engine" in e:
            f.append(f"speed ({name}): {mode}: engine {e['ms_per_image']:.3f} ms/image vs model "
                     f"{e['model_ms_per_image']:.1f} ms/image — the model is {e['model_over_engine']:.0f}× the engine.")
    m = s["model"]
    if m and m.get("images_per_s_1_torch_thread"):
        b0 = min(m["images_per_s"])
        f.append(f"speed ({name}): model image encoding at batch {b0}: {m['images_per_s'][b0]:.1f} images/s with "
                 f"torch's {m.get('torch_threads')} threads vs {m['images_per_s_1_torch_thread'][b0]:.1f} with one "
                 "(measured while other processes shared the 2 cores).")
    big = s["eig_cost"].get("N=1000,G=50")
    if big:
        one = big.get("ms_per_image_1_blas_thread")
        f.append(f"speed: choosing a group by EIG at N=1000, G=50 costs {big['ms_per_image']:.3f} ms per image "
                 f"(batch 256)" + (f", {one:.3f} ms with one BLAS thread" if one is not None else "") + ".")
    return f


def _summary(out: Path, res, preps, cmd, cmds, timings, wall, args) -> str:
    L = ["# twentyq benchmarks — summary", ""]
    L.append(f"Produced by `{cmd}` in {wall:.0f} s on this machine. Model: **{C.model_label(args.model)}**; "
             "the simulator rows use no model. The offline stand-in is near chance on these datasets: its numbers "
             "test the pipeline, they do not rank methods for a real CLIP model.")
    L.append("")
    L.append("## Findings")
    L += [f"- {x}" for x in _findings(res, preps)]
    pr = res.get("probe") or {"skipped": "not run"}
    if "skipped" in pr:
        L.append(f"\n## attribute probe (trained here)\n\nSkipped: {pr['skipped']}.")
    else:
        L += probe.summary_section(pr, _rel(out, out / "probe" / _probe_eval_dir(args)))
    L.append("\n## bench.reproduce")
    for name, r in res["reproduce"].items():
        L.append(f"\n### {name} — {preps[name].model_label}, {r['meta']['n_images']} images, system "
                 f"{r['meta']['system']} (Q={r['meta']['q_full']})\n")
        L.append(C.md_table(["mode", "n", "accuracy [95% CI]", "mean Q", "text encodes"], reproduce.table_rows(r)))
        L.append("\n" + C.md_table(["A", "B", "only A right", "only B right", "McNemar p"],
                                   [[t["a"], t["b"], t["a_only"], t["b_only"], C.fmt_p(t["p"])]
                                    for t in r["mcnemar"][:3]]))
        L.append(f"\nReport: [{_rel(out, out / 'reproduce' / name / 'report.md')}]"
                 f"({_rel(out, out / 'reproduce' / name / 'report.md')}) · plot: "
                 f"[accuracy.png]({_rel(out, out / 'reproduce' / name / 'accuracy.png')})")
    L.append("\n## bench.policies\n")
    for name, r in res["policies"].items():
        L.append(f"\n### {name} — {preps[name].model_label}\n")
        L.append(f"Full system {r['full']['accuracy']:.3f} at Q={r['meta']['q_full']}; baseline "
                 f"{r['baseline']['accuracy']:.3f} at Q={r['meta']['n_classes']}."
                 + ("" if r["informative"] else " **Not informative:** the full system is not clearly above "
                    f"guessing (majority class {r['majority_class_rate']:.3f}), so these numbers rank nothing.")
                 + "\n")
        L.append(C.md_table(["policy", "norm. AUC (τ sweep)", "norm. AUC (budget sweep)",
                             "smallest mean Q within 1 pt of full"], policies.summary_rows(r)))
        p = out / "policies" / name / "accuracy_vs_q.png"
        L.append(f"\nPlot: [{_rel(out, p)}]({_rel(out, p)}) · report: "
                 f"[{_rel(out, p.with_name('report.md'))}]({_rel(out, p.with_name('report.md'))})")
    L.append("\n## bench.calibrate\n")
    for name, r in res["calibrate"].items():
        f = r["fit"]
        L.append(f"\n### {name} — {preps[name].model_label}\n")
        L.append(f"Fit on {r['meta']['n_dev']} dev images: λ {f['lam_start']:g} → {f['lam']:.4g}, ε "
                 f"{f['eps_start']:g} → {f['eps']:.4g}.\n")
        L.append(C.md_table(["", "split", "λ", "ε", "accuracy", "NLL", "ECE", "mean confidence"],
                            calibrate.table_rows(r)))
        d = out / "calibrate" / name
        L.append(f"\nPlots: [reliability.png]({_rel(out, d / 'reliability.png')}) · "
                 f"[eig_curve.png]({_rel(out, d / 'eig_curve.png')}) · report: "
                 f"[report.md]({_rel(out, d / 'report.md')})")
    s = res["speed"]
    L.append(f"\n## bench.speed — {C.model_label(s['meta']['model'])}, {s['meta']['data']}\n")
    L.append(C.md_table(["mode", "mean Q", "engine ms/image", "model ms/image", "model ÷ engine"],
                        speed.engine_rows(s)))
    rows = []
    for b, r in s["throughput_engine"].items():
        rows.append([b, f"{r['full']:.0f}", f"{r['adaptive']:.0f}", *speed.model_cells(s, b)])
    L.append("\nThroughput (images/s):\n")
    L.append(C.md_table(["batch", "engine, full", "engine, adaptive", "model image encoding",
                         "model, 1 torch thread"], rows))
    gs = sorted({v["n_groups"] for v in s["eig_cost"].values()})
    ns = sorted({v["n_classes"] for v in s["eig_cost"].values()})
    L.append("\nEIG selection cost, ms per image (batch 256, K=10; in brackets: one BLAS thread):\n")
    L.append(C.md_table(["", *[f"G={g}" for g in gs]],
                        [[f"N={n}"] + [f"{s['eig_cost'][f'N={n},G={g}']['ms_per_image']:.4f} "
                                       f"({s['eig_cost'][f'N={n},G={g}'].get('ms_per_image_1_blas_thread') or float('nan'):.4f})"
                                       for g in gs] for n in ns]))
    m = s["memory"]
    L.append(f"\nPeak memory: engine {m['engine_peak_python_mb']:.1f} MB (tracemalloc); process max RSS "
             f"{m['process_max_rss_mb']:.0f} MB. Plot: [speed/speed.png](speed/speed.png) · report: "
             "[speed/report.md](speed/report.md)")
    L.append("\n## Commands\n")
    L.append("Everything above, in one process (model loaded once, images encoded once):\n")
    L.append(f"```\n{cmd}\n```\n")
    L.append("Each part on its own (the same numbers; `bench.all` builds its inputs the same way):\n")
    L.append("```\n" + "\n".join(cmds) + "\n```")
    L.append("\n## Wall time per step (s)\n")
    L.append(C.md_table(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()] +
                        [["total", f"{wall:.1f}"]]))
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
