"""Library code the benchmark scripts share; nothing here is run on its own.

- :mod:`bench.lib.harness`: the flags every benchmark takes, the images encoded once (``Prepared``), one sweep
  point (``run_point``), budget grids, and the outputs (results.json, report.md tables, plots).
- :mod:`bench.lib.oracle`: the oracle question order (the upper bound the policy benchmarks draw).
- :mod:`bench.lib.synthetic`: seeded inputs with no model: random attribute systems and similarities, the
  adaptive loop's timing cases, JPEG files, a word-level tokenizer for random CLIPs.
- :mod:`bench.lib.timing`: best-of-N wall time, with a device synchronisation.
- :mod:`bench.lib.server`: a real ``twentyq serve`` subprocess on a free loopback port.

The scripts a user runs are the modules of ``bench/`` itself (``python -m bench.NAME``; bench/README.md).
"""
