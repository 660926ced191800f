"""Device health: system samples, device-specific sources (tegrastats, Pi throttling, Edge TPU,
NVML) and the health message.
"""
