"""Running classification: settings, the Classifier, the run pipeline (executors and stores),
datasets and evaluation reports. Uses :mod:`engine.core` and :mod:`engine.encoders`."""
