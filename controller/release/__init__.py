"""The workstation side: bundle specs, recipes, variant generation, model fetch and bundle
inspection. No server code imports it.
"""
