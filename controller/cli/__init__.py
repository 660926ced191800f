"""The operator's command line over the REST API, one module per command group."""
