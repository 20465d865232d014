"""The on-disk protocol: layout, atomic publish, schema, tickets, claims, leases (docs/spool.md)."""
