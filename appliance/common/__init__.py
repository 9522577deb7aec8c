"""Small helpers the device and the build stage share, each written once.

`fsutil` (crash-safe writes, file digests), `versions` (installed package versions), `stats`
(percentile, Wilson interval) and `questions` (the eval-question schema). Standard library and
numpy only, so that both sides import them without torch.
"""
