"""What the tests share, defined once; no test module imports another test module.

- :mod:`tests.support.encoders`: every fake encoder (and the tiny model folders, the offline stand-in);
- :mod:`tests.support.data`: the colour system and its images, noise images, labelled folders, hostile bytes;
- :mod:`tests.support.serving`: the in-process app over the fake encoder, and a real ``twentyq serve`` subprocess;
- :mod:`tests.support.calibration`: the simulated calibration world (a SimEncoder over 360 noise images);
- :mod:`tests.support.slow_cli`: ``python -m tests.support.slow_cli ARGS``, the real CLI over a slow fake encoder.

Fixtures used by more than one test module are in ``tests/conftest.py``; Hypothesis strategies in
``tests/strategies.py``; the slow reference implementation of the method in ``tests/reference.py``.
"""
