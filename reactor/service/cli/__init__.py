"""Command-line programs: thin shells over the library (main(argv) -> exit status)."""
