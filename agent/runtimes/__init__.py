"""Runtime plug-ins, one module per runtime (`KEY` = a protocol.events.RuntimeKey), imported
lazily and probed at start; `base` holds the interface, the error tree and the registry.
"""
