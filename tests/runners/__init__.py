"""The runner contract: one suite of tests every runtime passes (see contract.py)."""
