"""One module per command; edgespec.cli wires them into the app."""
