"""The scheduler daemon: watch the spool, accept requests, reap leases, launch workers."""
