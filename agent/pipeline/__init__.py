"""Agent pipeline: camera settings and sources, per-camera workers, motion gating, filters, the
tracker and the best-frame snapshot keeper.
"""
