"""Batch programs (issue 18): prompt templates expanded once at acceptance (templates.py),
parameter sweeps as a random-access cross product (sweep.py) and `--plan` (plan.py)."""
