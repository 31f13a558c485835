"""Hand-applied mutants of issue 26: each is written into the code, its killing test run on it and on the unchanged
code, and the file restored. Run from the repository root: ``PYTHONPATH=$PWD python -m bench.hand_mutants``.
See docs/mutation.md ("Issue 26")."""

import subprocess
import sys
from pathlib import Path

M = [
 ("w_g objective without /K_g", "engine/core/channel_fit.py",
  "tot += np.log(wg * lik[g] + (1.0 - wg) / sizes[g])", "tot += np.log(wg * lik[g] + (1.0 - wg))",
  "tests/test_guarantees.py::test_fitted_reliabilities_minimise_the_documented_objective"),
 ("lookahead cap G > candidates + 1", "policies/builtin.py",
  "if G > self.candidates:", "if G > self.candidates + 1:",
  "tests/test_guarantees.py::test_lookahead_caps_exactly_candidates_groups"),
 ("budget cut >= instead of >", "engine/run/calibration_file.py",
  "                conf[p.q > budget] = np.nan\n", "                conf[p.q >= budget] = np.nan\n",
  "tests/test_guarantees.py::test_the_cut_keeps_a_step_that_spends_the_budget_exactly"),
 ("Clopper-Pearson with n - k + 2", "engine/core/channel_fit.py",
  "return float(beta.ppf(alpha, k, n - k + 1))", "return float(beta.ppf(alpha, k, n - k + 2))",
  "tests/test_guarantees.py::test_clopper_pearson_lower_bound_is_where_the_binomial_tail_equals_alpha"),
 ("w guard removed", "engine/core/channel_fit.py",
  "x = res.x if objective(res.x) <= objective(np.ones(len(fitted))) else np.ones(len(fitted))", "x = res.x",
  "tests/test_guarantees.py::test_the_fit_is_never_worse_than_full_reliability_whatever_the_optimiser_returns"),
]


def main() -> None:
    py = sys.executable
    for name, f, old, new, test in M:
        p = Path(f); orig = p.read_text()
        assert orig.count(old) == 1, (name, orig.count(old))
        r0 = subprocess.run([py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test], capture_output=True, text=True)
        p.write_text(orig.replace(old, new))
        try:
            r = subprocess.run([py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test], capture_output=True, text=True)
        finally:
            p.write_text(orig)
        last = lambda r: [l for l in r.stdout.splitlines() if " passed" in l or " failed" in l][-1:]
        print(f"{name}: unmutated {last(r0)} rc={r0.returncode}; mutant {last(r)} rc={r.returncode}", flush=True)


if __name__ == "__main__":
    main()
