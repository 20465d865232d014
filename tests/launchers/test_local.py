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
    link = tmp_path / "link-to-data"
    link.symlink_to(spool.layout.root)
    first = LocalLauncher(spool.layout.root, max_workers=1, idle_exit=30, pin_gpus=False)
    wid = first.launch(time.time())  # then the daemon is killed: `first` is never used again
    try:
        for root in (link, spool.layout.root):
            again = LocalLauncher(root, max_workers=1, pin_gpus=False)
            assert again.running() == [wid] and again.reap(time.time()) == []
        assert LocalLauncher(tmp_path / "elsewhere", pin_gpus=False).running() == []
    finally:
        first.procs[wid].popen.kill()
        first.procs[wid].popen.wait()


def test_a_recorded_pid_taken_by_another_process_is_not_adopted(spool):
    """A worker of a killed daemon that has gone, its pid now another process's: never
    adopted (nor signalled), and its record leaves the jobs file."""
    import json
    import os

    import psutil

    jobs_file = spool.layout.root / "spool" / "local-jobs.json"
    me = psutil.Process(os.getpid())  # alive, but not the worker the record describes
    record = {
        "name": "w-gone",
        "job_id": str(me.pid),
        "state": "running",
        "created": 1.0,
        "pid": me.pid,
        "host": __import__("socket").gethostname(),
        "data_root": str(spool.layout.root),
        "proc_start": me.create_time() - 100.0,
        "gpu": None,
    }
    jobs_file.write_text(json.dumps({"w-gone": record}))
    launcher = LocalLauncher(spool.layout.root, max_workers=1, pin_gpus=False)
    assert launcher.running() == [] and launcher.stop_all(grace=1) == []
    assert json.loads(jobs_file.read_text()) == {}
    record["proc_start"] = me.create_time()  # the same process: adopted
    jobs_file.write_text(json.dumps({"w-gone": record}))
    assert LocalLauncher(spool.layout.root, max_workers=1, pin_gpus=False).running() == ["w-gone"]


def test_workers_are_recorded_in_the_jobs_file_until_reaped(spool):
    import json

    launcher = LocalLauncher(spool.layout.root, max_workers=1, idle_exit=0.5, pin_gpus=False)
    wid = launcher.launch(time.time())
    saved = json.loads((spool.layout.root / "spool" / "local-jobs.json").read_text())
    assert list(saved) == [wid] and saved[wid]["pid"] == launcher.procs[wid].popen.pid
    assert saved[wid]["proc_start"] > 0 and saved[wid]["data_root"] == str(spool.layout.root.resolve())
    exited = []
    wait_for(lambda: exited.extend(launcher.reap(time.time())) or exited, what="idle exit")
    assert json.loads((spool.layout.root / "spool" / "local-jobs.json").read_text()) == {}
