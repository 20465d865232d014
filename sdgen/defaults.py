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
# The rate (images/s) and ETA of `sdgen run` and `sdgen status --watch` (sdgen/cli/rate.py):
# measured over the landings of the last RATE_WINDOW_SECONDS, long enough to hold several
# groups of grouped tickets (a group of 16 lands at once), short enough to follow a change
# of pace (a worker more or less); no rate until the landings span RATE_MIN_SPAN_SECONDS, as
# two workers' groups landing a moment apart would read hundreds of images per second.
RATE_WINDOW_SECONDS = 60.0
RATE_MIN_SPAN_SECONDS = 3.0
# `sdgen status --watch`: seconds between looks at the spool (--interval). Each look lists
# the spool's folders; once a second is live enough for work that takes seconds per image.
WATCH_INTERVAL_SECONDS = 1.0
# `sdgen status`: the USER column is as wide as its longest name up to this; longer names
# are cut (a table wider than a terminal wraps and stops being a table).
STATUS_USER_WIDTH = 12


# -- the daemon's and tracker's remaining waits (issue 16: no tunable hard-coded in a module) --

# An inbox entry that cannot be moved is reported once and tried again this often, in case
# someone fixed its permissions.
STUCK_RETRY_SECONDS = 60.0

# Tickets written per step of a split before the deadline is looked at again (the deadline
# is also looked at every ticket; this only bounds the cursor's slice).
SPLIT_SLICE_TICKETS = 200
# Tickets of one request kept written in pending/ while it is split (the split window): the
# rest wait in the request's split cursor and are written as workers take these, so a
# queue's files grow with what is claimable soon, not with what waits. Far more than a tick's
# claims (a node of 8 GPUs takes a few dozen one-image tickets a second) and than a group
# claim looks ahead (256 names).
SPLIT_WINDOW_TICKETS = 1024
# The daemon ticks at most this often on watcher events (a busy node sends hundreds a
# second): one tick per burst. A 1M-ticket spool's tick takes ~40 ms on 2 cores, so a busy
# daemon stays near 20% of a core instead of ticking back to back.
TICK_MIN_INTERVAL_SECONDS = 0.2
# A done-marker is folded into its request's ledger (requests/<id>/done.jsonl) once it has
# been in done/ this long (the daemon's clock) with no other copy and no lease: done/, which
# every tick lists, then holds the last minutes of work, not the whole history. -1: never.
FOLD_AFTER_SECONDS = 300.0
# Most done-markers folded per tick (each is read and removed; the ledger append is fsynced
# once per request), so folding a backlog never holds the loop.
FOLD_MOST_PER_TICK = 2000
# A ledger is read whole by `sdgen status` only through its summary; this bounds the
# readers that do read it (the parent run's manifest, audits): ~400 bytes per ticket.
MAX_LEDGER_BYTES = 512 * 1024 * 1024

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


# -- batch programs (issue 18: templates, sweeps, --plan) ----------------------------------
# Prompts a request's templates may expand to, in all (`expand: all` or N random each): the
# expansions are written into requests/<id>/request.yaml, which must stay a file a reader
# takes in at once (and the images limit, 100,000, applies on top).
MAX_EXPANDED_PROMPTS = 10_000
# Bytes of all expanded prompts together (UTF-8): with the templates as written (at most
# the 1 MiB of the request file) request.yaml stays under what readers take (2 MiB).
MAX_EXPANDED_PROMPT_BYTES = 512 * 1024
# Values in one sweep list: a grid of 500 columns is already unreadable; keeps request.yaml
# inside the YAML node limit above with the expanded prompts.
MAX_SWEEP_VALUES = 500
# Wildcard files (<data>/wildcards/**/*.txt) are read by the daemon for untrusted requests:
# bounded in number, folder depth, size and lines, and nesting of wildcards in wildcards
# (a wildcard that names itself would recurse until Python's stack ran out).
MAX_WILDCARD_FILES = 10_000
MAX_WILDCARD_FOLDER_DEPTH = 8
MAX_WILDCARD_FILE_BYTES = 1024 * 1024
MAX_WILDCARD_LINES = 10_000
MAX_WILDCARD_NESTING = 8
# Expanding one request's templates may take this long (it runs in the daemon's intake and
# in `sdgen submit`); 10,000 expansions take well under a second.
MAX_EXPAND_SECONDS = 5.0

# `--plan`'s GPU-time estimate: the keras-cv engine on JAX, one NVIDIA H200, 512x512, 50
# steps (docs/benchmarks.md): seconds per image at batch 1, and images/s at batch 16 (a JAX
# worker fills batches of 16 from small tickets of equal settings: group claims). Scaled by
# steps and pixels; an estimate, not a measurement of this request.
ESTIMATE_CARD = "NVIDIA H200"
ESTIMATE_SECONDS_PER_IMAGE_B1 = 0.387
ESTIMATE_IMAGES_PER_SECOND_B16 = 4.79

# -- grids and datasets (issue 18, second half) -------------------------------------------------
# `sdgen grid` and the tracker's grid: cells are scaled down so that the whole grid, labels
# included, stays within this many pixels a side (a 500 x 500 sweep of 512-pixel images
# would be 256k pixels a side, beyond what viewers and MLflow's UI open).
GRID_MAX_SIDE = 8192
# A worker waits this long for the flock of an output folder's metadata.jsonl before it
# appends without it (a holder stopped with SIGSTOP must not stall the others).
METADATA_LOCK_SECONDS = 10.0
# `sdgen export --format webdataset`: a shard is cut before it passes this many bytes
# (webdataset's readers stream shards; ~1 GB is their usual size).
EXPORT_SHARD_BYTES = 1_000_000_000
# The tracker's grids of a finished sweep (logged to the parent run): smaller than
# `sdgen grid`'s, as each is an artifact in MLflow's store and shown in its UI; at most
# TRACKING_GRIDS of them (one per value of a third swept field).
TRACKING_GRID_MAX_SIDE = 4096
TRACKING_GRIDS = 20

# -- retention and notifications (issue 20) ---------------------------------------------------
# `sdgen daemon --retain AGE` prunes ended requests' records this often: listing every
# request's state.json and every ticket folder is a full scan, fine hourly, wasteful per tick.
RETAIN_EVERY_SECONDS = 3600.0
# Most requests one prune pass of the daemon removes (each is a few unlinks and an rmdir per
# file of its folder), so the pass stays well under a tick's budget; a pass that hit the bound
# goes on after RETAIN_BACKLOG_SECONDS instead of an hour later, so a backlog (a first
# --retain on an old spool) drains in minutes without ever holding the loop.
RETAIN_MOST_PER_RUN = 200
RETAIN_BACKLOG_SECONDS = 5.0
# --webhook: one POST may take this long (a hung server must not hold deliveries for ever);
# a failed POST (no answer, 408, 429, 5xx) is tried again after BASE, 2 x BASE ... up to CAP,
# at most ATTEMPTS times in all (about 8 minutes with these), then the end is recorded as not
# notified, logged and shown by `sdgen status`.
NOTIFY_HTTP_TIMEOUT_SECONDS = 10.0
NOTIFY_ATTEMPTS = 6
NOTIFY_BACKOFF_BASE_SECONDS = 2.0
NOTIFY_BACKOFF_CAP_SECONDS = 300.0
# --on-done: the command is killed (its process group) past this; it is for a message or a
# copy, not for work: long work belongs in a job it starts.
NOTIFY_COMMAND_TIMEOUT_SECONDS = 120.0
# On shutdown the daemon waits this long for deliveries in hand; what is left stays owed
# (state.json `notify: pending`) and the next daemon delivers it.
NOTIFY_STOP_SECONDS = 10.0

# -- the web dashboard (issue 21: `sdgen web`) -------------------------------------------------
# Where `sdgen web` listens unless told: loopback only, so that writes need no token there.
WEB_HOST = "127.0.0.1"
WEB_PORT = 8765
# How often an open page asks for fresh rows (short polling, no page reload): often enough to
# watch a dry-run request finish, rare enough that a dozen open tabs on a 1,000-request spool
# (a queue look reads every state.json) stay a small load.
WEB_POLL_SECONDS = 2.0
# One look at the spool serves every page and tab asking within this long (the queue page,
# the request pages and the JSON API share it).
WEB_LOOK_CACHE_SECONDS = 1.0
# Rows of the queue page, and thumbnails of a gallery page, at a time (older ones are paged):
# the page stays quick to render and to poll at 1,000 requests or 10,000 images.
WEB_QUEUE_PAGE_SIZE = 200
WEB_GALLERY_PAGE_SIZE = 60
# Longest side of a gallery thumbnail, in pixels (made once, cached under
# <data>/cache/thumbnails/<size>/<request id>/); JPEG quality of the thumbnails.
WEB_THUMBNAIL_SIZE = 192
WEB_THUMBNAIL_QUALITY = 80
# Requests whose finished-image listing is kept in memory (a 10,000-image request's listing
# reads its done ledger and looks at every file once; kept until the request changes).
WEB_GALLERY_CACHE_REQUESTS = 16
# The largest request body the server reads (a request file is at most 1 MiB; a form adds
# its encoding); anything bigger is refused before it is read whole.
WEB_MAX_BODY_BYTES = 3 * 1024 * 1024
# Problem tickets (failed, held, deferred) listed with their reasons on a request's page;
# past this a count says how many more (`sdgen status ID --json` has them all).
WEB_PROBLEM_TICKETS_SHOWN = 200
