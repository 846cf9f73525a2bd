"""Operators, one module per group: import, animate, export, assets/dependencies/worker."""
