"""Everything that leaves the device: the MQTT session and its settings, deployment events, the
on-disk outbox, detection batches and snapshot delivery.
"""
