"""Acting on one device at a time: deployments followed to running, snapshot requests and trust
pushes.
"""
