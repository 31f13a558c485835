"""The attribute probe (trained here; NOT CLIP): its training data, its trainer and its Gen-1 evaluation.

    python -m bench.probe train|eval|all|verify-shipped     # bench/probe/cli.py (docs/probe.md)

- :mod:`bench.probe.data`: the Gen 2–3 training sprites, attribute captions, manifest and leak guard;
- :mod:`bench.probe.train`: the contrastive training of the two heads on frozen features;
- :mod:`bench.probe.evaluate`: the Gen-1 benchmarks (web150, sprites151, jina15-gen1);
- :mod:`bench.probe.cli`: the command (train, eval, all, verify-shipped against the shipped probe).
"""
