"""The controller: settings, database and the wiring of its rooms (api, mqtt, bundles, fleet)
into one process; cli, release and demo are the workstation side.
"""
