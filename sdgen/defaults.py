"""Every tunable in one place, each with the reason for its value."""

# Drop-zone files larger than this are rejected unread: a request is a few hundred bytes,
# and a YAML parser given a huge file can take the daemon's memory with it.
MAX_REQUEST_BYTES = 1024 * 1024

# Limits checked on the YAML event stream before any document is built: a request is a flat
# mapping with one list (prompts); a deep or wide document is an attack, not a request.
MAX_REQUEST_DEPTH = 8  # nested lists/mappings (RecursionError lives past ~1000)
MAX_REQUEST_KEYS = 64  # keys in one mapping (the schema has 17)
MAX_REQUEST_NODES = 20_000  # scalars + collections in the whole document (1000 prompts fit)

# Every reason sdgen writes (rejected/*.reason, corrupt/*.reason, ticket reasons, status) is
# one line of at most this many characters: 100,000 unknown keys must not make a 4 MB line.
MAX_REASON_CHARS = 1000

# Spool records (tickets, done-markers, state.json, leases, events) are a few KB; anything
# past this is damage or an attack, and is moved to spool/corrupt/ unread.
MAX_RECORD_BYTES = 4 * 1024 * 1024

# A file in the inbox is taken once no process holds it open for writing (where the
# filesystem can tell: a read lease) and it has been quiet (size and mtime unchanged) this
# long: tools that write in place may pause between writes. `sdgen submit` and writers
# that publish by rename skip the wait by dating the file back before the rename.
INBOX_SETTLE_SECONDS = 1.0

# The daemon's loop must answer SIGTERM, cancels and reaping within about a second however
# much intake there is: each tick spends at most this long reading inbox files and writing
# tickets of large requests; the rest waits for the next tick (docs/spool.md, Acceptance).
INTAKE_BUDGET_SECONDS = 0.3

# The claim lock only keeps one host's workers from all racing for the same first name (the
# rename decides who wins): a worker that cannot get it this fast claims without it, so one
# stopped worker (SIGSTOP, Slurm suspend) holding it cannot stall the host.
CLAIM_LOCK_TIMEOUT_SECONDS = 2.0

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

# Model snapshots (engine/snapshot.py): one worker per node writes a snapshot (about 23 s
# to build the keras models, then 2 GB to write); the others wait this long for it, which
# is less than building the models themselves, then generate through keras meanwhile (so a
# stopped writer cannot stall them).
SNAPSHOT_WAIT_SECONDS = 120.0

# `sdgen cache prune`: snapshots (and, with --weights, weight files) unused this long go
# (--older-than overrides it); JAX's compilation cache is cut to this size, least recently
# used entries first (each model size and batch bucket compiles to some 10-100 MB).
CACHE_UNUSED_SECONDS = 30 * 86400.0
JAX_CACHE_MAX_BYTES = 10 * 10**9

# -- waits and limits of the workers ---------------------------------------------------------
# A full disk is not a failure: the ticket is deferred this long (no attempt counted) and its
# worker pauses as long before claiming again, so freed space is used within seconds without
# a worker spinning on ENOSPC.
DISK_FULL_WAIT_SECONDS = 10.0

# An idle worker looks for a pending ticket this often: a new ticket starts within a fifth of
# a second, and an idle scan of tickets/pending costs one listdir. Also the slice a worker's
# pauses are cut into, so a signal ends a pause this fast.
WORKER_POLL_SECONDS = 0.2

# System metrics (SDGEN_SYSTEM_METRICS): one sample a second, at most this many per ticket
# (10 minutes' worth), so a long ticket's MLflow run stays small.
SYSMETRICS_INTERVAL_SECONDS = 1.0
SYSMETRICS_MAX_SAMPLES = 600

# -- the engine ------------------------------------------------------------------------------
# A snapshot's temporary folder untouched this long was left by a writer that died (writing
# one takes well under a minute); it is swept, and `sdgen cache status` calls it so.
SNAPSHOT_STALE_TMP_SECONDS = 3600

# One weight file's download gives up when the server sends nothing for this long (a stalled
# connection otherwise hangs `sdgen weights fetch` for ever).
WEIGHTS_DOWNLOAD_TIMEOUT_SECONDS = 60

# -- launchers -------------------------------------------------------------------------------
# A running job the daemon has too many of is stopped only after holding no ticket this long:
# between two tickets a busy worker holds none for a moment, and must not be cut then.
JOB_TRIM_AFTER_SECONDS = 10.0

# While a launcher waits for its jobs to end (end_all, stop_all), it looks this often.
JOB_END_POLL_SECONDS = 1.0
# Slurm: squeue is cheap, so look twice as often; scancel again this often in case
# slurmctld missed one (a busy controller can drop requests).
SLURM_END_POLL_SECONDS = 0.5
SLURM_CANCEL_AGAIN_SECONDS = 5.0

# Slurm: one `squeue` for all jobs this often (the daemon's tick is about a second; slurmctld
# must not be flooded by a daemon that watches hundreds of jobs).
SLURM_POLL_SECONDS = 2.0
# A Slurm command that has not answered in this long reads as failed (exit 124): a hung
# slurmctld must not hang the daemon's tick.
SLURM_COMMAND_TIMEOUT_SECONDS = 30

# ADSP: each run is polled with one request, first after POLL_MIN, backing off to POLL_MAX
# (AE5's API is slow and shared by everyone on the cluster); a run still starting after
# START_DEADLINE (image pulls and scheduling take minutes, not this long) is stopped and
# counted failed.
ADSP_POLL_MIN_SECONDS = 2.0
ADSP_POLL_MAX_SECONDS = 30.0
ADSP_START_DEADLINE_SECONDS = 20 * 60.0

# Local workers: `nvidia-smi -L` (counting GPUs) answers in well under a second; a driver that
# hangs it must not hang the daemon's start.
NVIDIA_SMI_TIMEOUT_SECONDS = 10
# While stopping a local worker that is not our child (adopted from an earlier daemon), check
# this often whether it has gone.
LOCAL_STOP_POLL_SECONDS = 0.1

# -- the CLI ---------------------------------------------------------------------------------
# `sdgen run`'s progress on a pipe or in a log: at most one line this often (a terminal's bar
# is redrawn at every change); following another daemon's run, look this often.
PROGRESS_PLAIN_EVERY_SECONDS = 5.0
PROGRESS_FOLLOW_SECONDS = 1.0


# -- the daemon's and tracker's remaining waits (issue 16: no tunable hard-coded in a module) --

# An inbox entry that cannot be moved is reported once and tried again this often, in case
# someone fixed its permissions.
STUCK_RETRY_SECONDS = 60.0

# Tickets written per step of a split before the deadline is looked at again (the deadline
# is also looked at every ticket; this only bounds the cursor's slice).
SPLIT_SLICE_TICKETS = 200

# Start-up crash backoff of the launcher: 2, 4, 8 ... s, capped (daemon/policy.py).
STARTUP_BACKOFF_BASE_SECONDS = 2.0
STARTUP_BACKOFF_CAP_SECONDS = 120.0

# A worker relists pending/ at least this often, so a ticket that became pending since
# (a hand-back, a new request) waits at most this long for its turn in claim order.
CLAIM_RELIST_SECONDS = 1.0

# The tracker polls spool/events this often, and backs off up to this while MLflow is down.
TRACKER_POLL_SECONDS = 1.0
TRACKER_MAX_BACKOFF_SECONDS = 30.0

# A request whose logging failed (not an outage) is tried again after this, doubling up to
# the cap, while the other requests go on being logged.
TRACKING_REQUEST_BACKOFF_SECONDS = 2.0
TRACKING_REQUEST_MAX_BACKOFF_SECONDS = 300.0

# How long the daemon waits for its file watcher's thread to end on shutdown.
WATCHER_STOP_SECONDS = 5.0
