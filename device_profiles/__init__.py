"""Device kinds as YAML profiles, the loader, and the hardware probe that picks one."""
