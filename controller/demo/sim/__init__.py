"""A fleet simulator: many simulated agents in one process, on the real wire contract, the real
chunk reassembly and the real bundle verifier, with knobs for the ways devices fail."""
