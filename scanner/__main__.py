"""`python -m scanner` runs `mai-scan`."""

from scanner.cli import main

main()
