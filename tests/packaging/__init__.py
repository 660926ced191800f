"""The distribution: sdist and wheel as built for an install, and what each extra brings."""
