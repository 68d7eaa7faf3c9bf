"""Run nnU-Net's console commands the way a user does, with a progress line per stage.

Each command runs in a subprocess with the nnU-Net folder variables pointing into one work
folder; its full output goes to a log file, and only the lines that show progress (epochs,
losses, pseudo Dice) are echoed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

EPOCH_FIELDS = {
    "epoch": re.compile(r": Epoch (\d+)$"),
    "train loss": re.compile(r": train_loss (\S+)$"),
    "val loss": re.compile(r": val_loss (\S+)$"),
    "pseudo Dice": re.compile(r": Pseudo dice \[(.*)\]$"),
    "time": re.compile(r": Epoch time: (\S+) s$"),
}
NUMPY_SCALAR = re.compile(r"np\.\w+\(([^)]*)\)")  # nnU-Net logs Dice values as np.float32(0.81)

# nnU-Net starts many worker processes by default, each importing torch; on small machines a
# couple of workers is much faster. Values the user set win.
SMALL_MACHINE_DEFAULTS = {"nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "1"}


class CommandFailed(RuntimeError):
    """An nnU-Net command exited with an error; the message holds the log's tail and its path."""


@dataclass(frozen=True)
class NnUNetFolders:
    """The three folders nnU-Net reads from its environment variables."""

    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def inside(cls, workdir: Path) -> NnUNetFolders:
        return cls(workdir / "nnUNet_raw", workdir / "nnUNet_preprocessed", workdir / "nnUNet_results")

    def environment(self) -> dict[str, str]:
        """The current environment plus the nnU-Net folder variables (and small-machine defaults)."""
        env = {**SMALL_MACHINE_DEFAULTS, **os.environ}
        env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed), nnUNet_results=str(self.results))
        return env


class EpochProgress:
    """Condenses nnU-Net's per-epoch log lines into one printed line per epoch."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def read(self, line: str) -> None:
        for name, pattern in EPOCH_FIELDS.items():
            match = pattern.search(line)
            if match:
                self.fields[name] = NUMPY_SCALAR.sub(r"\1", match.group(1)).replace(",", "")
                if name == "time":
                    self.print_and_reset()
                return

    def print_and_reset(self) -> None:
        epoch = self.fields.pop("epoch", "?")
        details = " | ".join(f"{name} {value}" for name, value in self.fields.items())
        print(f"      epoch {epoch}: {details} s", flush=True)
        self.fields = {}


class StageRunner:
    """Runs numbered stages and prints ``[i/n] title`` plus the elapsed time of each."""

    def __init__(self, n_stages: int, folders: NnUNetFolders, log_folder: Path) -> None:
        self.n_stages = n_stages
        self.folders = folders
        self.log_folder = log_folder
        self.done = 0

    def announce(self, title: str) -> float:
        self.done += 1
        print(f"[{self.done}/{self.n_stages}] {title}", flush=True)
        return time.perf_counter()

    @staticmethod
    def finish(started: float) -> None:
        print(f"      done in {time.perf_counter() - started:.0f} s", flush=True)

    def run(self, title: str, command: Sequence[str]) -> None:
        """Run one nnU-Net console command as a stage; raise :class:`CommandFailed` on error."""
        started = self.announce(f"{title}: {' '.join([Path(command[0]).name, *command[1:]])}")
        self.log_folder.mkdir(parents=True, exist_ok=True)
        log_path = self.log_folder / f"{self.done:02d}_{Path(command[0]).name}.log"
        with open(log_path, "w") as log, subprocess.Popen(
            list(command),
            env=self.folders.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as process:
            assert process.stdout is not None
            epoch = EpochProgress()
            for line in process.stdout:
                log.write(line)
                epoch.read(line.rstrip())
        if process.returncode != 0:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
            raise CommandFailed(f"{Path(command[0]).name} failed (exit code {process.returncode}); full log: {log_path}\n{tail}")
        self.finish(started)


def console_script(name: str) -> str:
    """Path of an nnU-Net console script installed next to this Python interpreter (else the bare name)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name
