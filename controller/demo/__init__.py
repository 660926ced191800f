"""The embedded demo: a local broker, the sample video, the agent as a separate process, the
bounded wait for polled state, and the one-command run."""
