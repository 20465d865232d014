"""The local launcher with real worker processes."""

import time

from sdgen.launchers.local import LocalLauncher, visible_gpus
from tests.conftest import wait_for


def test_gpus_come_from_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert visible_gpus() == ["0", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []


def test_one_worker_per_gpu_each_pinned(spool, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    launcher = LocalLauncher(spool.layout.root, idle_exit=0.5)
    assert launcher.max_workers == 2
    ids = [launcher.launch(time.time()), launcher.launch(time.time())]
    assert sorted(p.gpu for p in launcher.procs.values()) == ["3", "5"]
    envs = [p.popen.args for p in launcher.procs.values()]
    assert all("--worker-id" in a for a in envs)
    exited = []
    wait_for(lambda: exited.extend(launcher.reap(time.time())) or len(exited) == 2, what="idle exit")
    assert sorted(w.worker_id for w in exited) == sorted(ids)
    assert all(w.returncode == 0 for w in exited)
    logs = sorted(p.name for p in (spool.layout.root / "logs").iterdir())
    assert logs == sorted(f"worker-{i}.log" for i in ids)


def test_stop_all_ends_every_worker(spool):
    launcher = LocalLauncher(spool.layout.root, max_workers=2, idle_exit=60, pin_gpus=False)
    launcher.launch(time.time())
    launcher.launch(time.time())
    time.sleep(0.5)
    exited = launcher.stop_all(grace=10)
    assert len(exited) == 2 and launcher.running() == []


def test_leftover_workers_are_found_through_another_spelling_of_the_data_dir(spool, tmp_path):
    """A daemon restarted through a symlink (or a relative path) must count the workers its
    killed predecessor started, not start a second set on the same GPUs."""
    import subprocess
    import sys

    from sdgen.launchers.local import orphan_workers

    link = tmp_path / "link-to-data"
    link.symlink_to(spool.layout.root)
    proc = subprocess.Popen([sys.executable, "-m", "sdgen", "--data", "data", "worker", "--worker-id", "w-left",
                             "--idle-exit", "30"], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for root in (link, spool.layout.root):
            wait_for(lambda: [w for _, w, _ in orphan_workers(root)] == ["w-left"], what=f"the worker via {root}")
        assert orphan_workers(tmp_path / "elsewhere") == []
    finally:
        proc.kill()
        proc.wait()
