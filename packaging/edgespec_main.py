"""Entry script of the frozen executable (packaging/edgespec.spec)."""

from edgespec.cli import main

main()
