"""The controller's MQTT side: client session and capped publisher, ingest of what agents publish,
rows written from it, their retention, and commands sent to devices.
"""
