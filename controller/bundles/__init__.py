"""Bundles on the controller: the repository of uploaded, verified bundles and the chunk server
that streams them over MQTT.
"""
