"""Mutation testing of tdpwalk: see ``python -m mutate -h`` and docs/verification.md."""
