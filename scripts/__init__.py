"""Entry points: argument parsing, then library calls. Run them from the repository root as modules,
`python -m scripts.<name> ...`, so the repository's packages are importable without editing sys.path."""
