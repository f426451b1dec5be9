"""Fixtures of the WDL tests: a lint-clean child actor module and workflow files."""
