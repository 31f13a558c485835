"""twentyq's engine: adaptive twenty-questions classification over CLIP-style encoders.

Layers (each imports only those below it; see docs/ARCHITECTURE.md):

- :mod:`engine.core`: scoring, the adaptive loop, similarity sources, results, calibration (numpy/scipy);
- :mod:`engine.encoders`: encoder backends behind one protocol, their registry, text and image caches;
- :mod:`engine.run`: settings (:class:`RunConfig`, :class:`EncoderSpec`), the :class:`Classifier`, the run
  pipeline with its executors and stores, datasets and evaluation reports;
- :mod:`engine.cli`: the ``twentyq`` command line (an application of the layers above, imported by none).

The names below are what a user needs first (``zero_shot(image, labels=[...])`` for plain
zero-shot as ``transformers.pipeline("zero-shot-image-classification")`` gives it). They are loaded on first use, so that
``import engine.core`` stays free of torch and transformers.
"""

from __future__ import annotations

from engine.common.lazy import lazy_exports

_EXPORTS = {
    # the public face
    "Classifier": "engine.run.classifier", "RunConfig": "engine.run.config", "EncoderSpec": "engine.run.config",
    "load_encoder": "engine.encoders.registry", "load_system": "systems.io",
    "evaluate_classifier": "engine.run.evaluation", "zero_shot": "engine.run.zero_shot",
    "Calibration": "engine.run.calibration_file", "calibrate": "engine.run.calibration_file",
    "load_calibration": "engine.run.calibration_file", "save_calibration": "engine.run.calibration_file",
    # the core, for benchmarks and tests
    "NO_STOP": "engine.core.adaptive", "SCORERS": "engine.core.adaptive", "StopRule": "engine.core.adaptive",
    "classify_batch": "engine.core.adaptive", "STOP_REASONS": "engine.core.results", "Result": "engine.core.results",
    "Step": "engine.core.results", "Channel": "engine.core.scoring", "build_channel": "engine.core.scoring",
    "expected_information_gain": "engine.core.scoring", "SimulatedSource": "engine.core.simulate",
    "ArraySource": "engine.core.sources", "SimilaritySource": "engine.core.sources",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
