"""MLflow tracking, done by the daemon from facts the spool records (docs/spool.md, "Events")."""
