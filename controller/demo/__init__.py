"""The embedded demo: a local broker, the sample video and the one-command run."""
