"""The core: scoring (pure functions over arrays), the adaptive loop, similarity sources,
results and calibration. numpy and scipy (threadpoolctl for the fits' BLAS threads): no torch, no files, no
encoders."""
