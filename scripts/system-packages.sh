#!/usr/bin/env bash
# System packages the test suite uses beside Python ones: libfaketime (clock-skew trials),
# a single-node Slurm with munge (tests/launchers/test_slurm.py) and Debian's chromium with a
# font (tests/web/test_browser.py drives it headless through Playwright). Installs what is
# missing when it can (root + apt-get); otherwise says what will be skipped.
set -euo pipefail
need=()
command -v faketime >/dev/null || need+=(faketime)
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd >/dev/null || need+=(slurmd)
command -v sbatch >/dev/null || need+=(slurm-client)
command -v munged >/dev/null || need+=(munge)
command -v chromium >/dev/null || need+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    echo "not installed: ${need[*]}; the clock-skew and Slurm tests will be skipped" \
         "(the browser tests too without chromium;" \
         "install them as root: apt-get install --no-install-recommends ${need[*]})" >&2
fi
