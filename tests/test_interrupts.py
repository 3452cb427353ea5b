"""Interrupted runs and closed pipes, as a user meets them (real subprocesses, real signals):
Ctrl-C prints one line, exits 130 and leaves no partial output; a closed stdout ends quietly;
a SIGKILLed write leaves a recognisable temporary file that the next write to the same output
removes, while a temporary file whose writer still runs is left alone."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import resnets_jax as rj
from resnets_jax.io.files import TEMP_SUFFIX, atomic_output, remove_stale_temps
from resnets_jax.tools import cli

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = "resnetv2_18"
READY_TIMEOUT_S = 300  # start-up, tracing and conversion in a subprocess on a loaded 2-core machine

# Runs the CLI with the checkpoint write made to stop, mid-conversion, inside the temporary
# file's lifetime: it writes the file, touches argv[1] and sleeps, so that the test's signal
# lands while the output is in progress (deterministically, not by timing).
PAUSED_CONVERT = r"""
import pathlib, sys, time
import resnets_jax.tools.convert as convert
real = convert.write_flax_checkpoint
def paused(*args, **kwargs):
    real(*args, **kwargs)
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(600)
convert.write_flax_checkpoint = paused
from resnets_jax.tools.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", RESNETS_JAX_NO_COMPILE_CACHE="1")


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("interrupts") / "timm.safetensors"
    rj.convert.export_timm_checkpoint(*rj.create_model(NAME), path)
    return path


def _temps(directory):
    return sorted(p.name for p in Path(directory).iterdir() if p.name.endswith(TEMP_SUFFIX))


def _paused_convert(tmp_path, timm_file):
    """A ``convert`` subprocess stopped inside its write; returns it once the temporary file is there."""
    ready, out = tmp_path / "ready", tmp_path / "out.safetensors"
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_CONVERT, str(ready), "convert", NAME, "--checkpoint",
                             str(timm_file), "--output", str(out)], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the conversion did not reach its write"
        time.sleep(0.2)
    temps = _temps(tmp_path)
    assert len(temps) == 1 and temps[0].startswith(".out.safetensors.") and not out.exists()
    return proc, out


def test_ctrl_c_during_convert(tmp_path, timm_file):
    proc, out = _paused_convert(tmp_path, timm_file)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stdout, stderr) == (cli.EXIT_INTERRUPTED, "", "interrupted\n")
    assert not out.exists() and _temps(tmp_path) == []


def test_sigkill_leaves_a_temp_the_next_convert_removes(tmp_path, timm_file, capsys):
    proc, out = _paused_convert(tmp_path, timm_file)
    proc.kill()
    proc.communicate(timeout=60)
    stale = _temps(tmp_path)
    assert len(stale) == 1 and not out.exists()  # what a kill leaves: recognisable by its name
    assert cli.main(["convert", NAME, "--checkpoint", str(timm_file), "--output", str(out)]) == 0, capsys.readouterr()
    assert out.exists() and _temps(tmp_path) == []


def test_only_stale_temps_are_removed(tmp_path):
    """The next write to an output removes its stale temporary files; a temporary file whose
    writer still runs (its lock held) stays, and so do files that only look alike."""
    out = tmp_path / "w.safetensors"
    stale, other = ".w.safetensors.0123abcd" + TEMP_SUFFIX, ".other.safetensors.0123abcd" + TEMP_SUFFIX
    lookalikes = [".w.safetensors.tmp", ".w.safetensors.xyz" + TEMP_SUFFIX, "w.safetensors.0123abcd" + TEMP_SUFFIX]
    for name in [stale, other, *lookalikes]:
        (tmp_path / name).write_bytes(b"left by a kill")
    with atomic_output(out) as live:  # a writer at work: its temporary file is locked
        Path(live).write_bytes(b"new")
        assert not (tmp_path / stale).exists() and (tmp_path / other).exists()  # only the output's
        assert remove_stale_temps(str(tmp_path)) == [str(tmp_path / other)]  # every output's, but not live
        assert os.path.exists(live)
    assert out.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(lookalikes + ["w.safetensors"])


def test_closed_pipe_is_quiet(tmp_path):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    proc = subprocess.run([sys.executable, "-m", "resnets_jax", "list"], stdout=write, stderr=subprocess.PIPE,
                          env=_env(), text=True, timeout=300)
    os.close(write)
    assert (proc.returncode, proc.stderr) == (cli.EXIT_CLOSED_PIPE, "")
    shell = subprocess.run(f"{sys.executable} -m resnets_jax list --pretrained | head -1", shell=True,
                           capture_output=True, env=_env(), text=True, timeout=300)
    assert (shell.stdout, shell.stderr) == (rj.list_pretrained()[0] + "\n", "")


def test_ctrl_c_during_finetune_with_worker_processes(tmp_path):
    """Ctrl-C at a terminal reaches the whole process group, Grain's worker processes included:
    one line, status 130, no traceback from a worker, no process of the run left behind."""
    from PIL import Image
    for c, color in (("a", 40), ("b", 200)):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (24, 24), (color, i * 20, 0)).save(tmp_path / "data" / c / f"{i}.png")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "resnets_jax", "finetune", NAME, str(tmp_path / "data"), "-o", str(run),
                             "--epochs", "1000", "--batch-size", "4", "--img-size", "32", "--val-fraction", "0",
                             "--worker-processes", "1", "--checkpoint-every", "1", "--no-progress"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group, as a terminal's foreground job
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (run / "checkpoints").is_dir() or not any((run / "checkpoints").iterdir()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "fine-tuning did not reach its first checkpoint"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stdout) == (cli.EXIT_INTERRUPTED, ""), stderr[-3000:]
    assert "\ninterrupted\n" in stderr and "Traceback" not in stderr, stderr[-3000:]
    # After it, at most the resource tracker's note on shared memory: Grain releases a worker's
    # batch buffers in a background thread, which the exit can cut short (the tracker then
    # releases them itself; 1 run in 8 of a bare Grain loop, measured). Nothing else.
    after = stderr.split("\ninterrupted\n", 1)[1].splitlines()
    assert all("resource_tracker" in line for line in after), stderr[-3000:]
    deadline = time.monotonic() + 30  # the workers end after the main process
    while _alive_in_group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive_in_group(proc.pid) == []  # nothing of the run is left running in its process group


def _alive_in_group(pgid: int):
    """The processes of group ``pgid`` that still run (zombies, waiting for init to reap them,
    do not count), from Linux's /proc."""
    alive = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry))
    return alive


def test_an_interrupt_dropped_by_a_gc_callback_is_delivered_again(capsys):
    """Python drops an exception raised in a garbage-collector callback (JAX runs one at every
    collection), and with it a Ctrl-C that lands there; the command line raises it again until
    it is taken, without printing the dropped one."""
    import gc

    from resnets_jax.tools.interrupts import RETRY_S, _ignore, delivered_interrupts
    landed = []

    def callback(phase, info):
        if phase == "start" and not landed:
            landed.append(phase)
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))  # the handler runs here, inside the callback, and Python drops its exception

    gc.callbacks.append(callback)
    start, hook = time.monotonic(), sys.unraisablehook
    try:
        with pytest.raises(KeyboardInterrupt), delivered_interrupts():
            gc.collect()
            assert landed  # the first interrupt was dropped: still running
            while time.monotonic() - start < 10 * RETRY_S:
                time.sleep(0.01)
        # the command is ending on Ctrl-C: what the interrupt cut short stays quiet when collected
        assert sys.unraisablehook is _ignore
    finally:
        gc.callbacks.remove(callback)
        sys.unraisablehook = hook
    assert time.monotonic() - start < 10 * RETRY_S  # raised again, not waited out
    assert "KeyboardInterrupt" not in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
