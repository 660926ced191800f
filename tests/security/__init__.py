"""Attack tests: each case is one thing an attacker tries, refused with its reason."""
