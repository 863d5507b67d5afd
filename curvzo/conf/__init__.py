"""The Hydra config tree, shipped with the package and found as pkg://curvzo.conf (see curvzo/run.py)."""
