"""The test suite: `make test` runs it all, `make test-fast` the tier without servers (see pyproject.toml)."""
