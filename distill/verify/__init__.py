"""Verifiers that judge teacher samples before they are kept (code is run in a sandbox, see ``sandbox``)."""
