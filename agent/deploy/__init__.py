"""Deployments on the device: offers, chunk and HTTP transfer, install into a slot, model loading,
probation, trust updates and fault points.
"""
