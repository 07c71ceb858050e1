"""Learning methods: one module or package per method."""
