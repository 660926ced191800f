"""Detection: pre-processing into the model's input, decoders per post-processing kind, NMS and
tiling. Pure numpy; no camera, no MQTT.
"""
