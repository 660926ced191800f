"""Everything that leaves the device: the MQTT session, the on-disk outbox, detection batches and
snapshot delivery.
"""
