"""The wire contract between agents and the controller: topics, messages, codec. No I/O."""
