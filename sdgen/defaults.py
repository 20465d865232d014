"""Every tunable in one place, each with the reason for its value."""

# Drop-zone files larger than this are rejected unread: a request is a few hundred bytes,
# and a YAML parser given a huge file can take the daemon's memory with it.
MAX_REQUEST_BYTES = 1024 * 1024

# A file in the inbox whose mtime is this recent may still be being written by a tool that
# does not publish by rename; wait for it to settle.
INBOX_SETTLE_SECONDS = 0.2

# Files left in spool/tmp by a crashed writer are swept after this long (Maildir: 36 h).
TMP_SWEEP_SECONDS = 36 * 3600

# Workers rewrite their lease this often; the daemon reclaims a ticket whose lease has not
# changed for LEASE_TIMEOUT_SECONDS of the daemon's own clock (about 3 heartbeats).
HEARTBEAT_SECONDS = 5.0
LEASE_TIMEOUT_SECONDS = 20.0

# Transient failures retry with capped exponential backoff, then the ticket is held.
MAX_ATTEMPTS = 4
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 300.0

# A ticket whose worker died this many times without a result is held (poison ticket).
MAX_WORKER_DEATHS = 2

# The daemon rescans the spool this often even when the watcher reports nothing.
RESCAN_SECONDS = 2.0

# Worker exit codes: 3 = this worker cannot work (out of GPU memory, broken install);
# the daemon does not count it as a crash to back off from.
WORKER_EXIT_OK, WORKER_EXIT_FATAL = 0, 3

# A worker that exits with an error within STARTUP_SECONDS failed at start-up; after this
# many in a row the daemon stops launching and says why in `sdgen status` (a broken
# install or a wrong partition would otherwise fill a cluster's queue with failures).
STARTUP_SECONDS = 30.0
MAX_STARTUP_FAILURES = 3

# Workers started by the daemon exit after the spool has been idle this long.
WORKER_IDLE_EXIT_SECONDS = 30.0

# On SIGTERM the daemon waits this long for its workers to hand tickets back.
SHUTDOWN_GRACE_SECONDS = 30.0
