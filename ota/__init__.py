"""Bundles: manifest, build, signing, the root of trust, streaming verification, safe unpack,
A/B slots with probation state, and the transfer of bundle bytes (handed in, no MQTT here).
"""
