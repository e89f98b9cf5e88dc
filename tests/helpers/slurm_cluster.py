"""A real single-node SLURM cluster for the tests, started from Debian's packages.

``LocalSlurm.start()`` writes a ``slurm.conf`` into a fresh temporary folder and starts
``munged`` (as user munge, on its own socket and key), ``slurmctld`` and ``slurmd`` on free
ports; GPU slices are GRES whose ``File=`` points at placeholder character devices, so SLURM
schedules them, sets ``CUDA_VISIBLE_DEVICES`` and runs at most as many jobs as there are slices.
The node claims more CPUs than the machine has (``config_overrides``) so that the slices, not
the cores, limit concurrency. Nothing outside the folder is touched; ``stop()`` cancels every
job, waits for them to end and stops the daemons.

It needs root and the packages ``slurmctld slurmd slurm-client munge``; ``SlurmUnavailable``
says what is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PROGRAMS = (
    "munged",
    "munge",
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "scontrol",
    "scancel",
    "srun",
)
INSTALL = "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"
FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE",
}  # fmt: skip
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


class SlurmUnavailable(Exception):
    """SLURM cannot be started here; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_processes(pid_files: list[Path], timeout_s: float = 10) -> None:
    """SIGTERM to the daemons named by ``pid_files``, all at once; SIGKILL to any still alive
    after ``timeout_s``."""
    pids = []
    for pid_file in pid_files:
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            pids.append(pid)
        except (OSError, ValueError):
            continue
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.1)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class LocalSlurm:
    root: Path
    slices: dict[str, int]
    programs: dict[str, str] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """Variables that point SLURM's commands (and submitit) at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    # -- start / stop ------------------------------------------------------------------------

    @classmethod
    def start(
        cls, slices: dict[str, int] | None = None, cpus: int = 16, partition: str = "debug"
    ) -> LocalSlurm:
        if os.geteuid() != 0:
            raise SlurmUnavailable("slurmd and munged must be started as root")
        programs = {name: shutil.which(name, path=SBIN_PATH) for name in PROGRAMS}
        missing = [name for name, path in programs.items() if path is None]
        if missing:
            raise SlurmUnavailable(f"{', '.join(missing)} not installed ({INSTALL})")
        try:
            munge_user = pwd.getpwnam("munge")
        except KeyError:
            raise SlurmUnavailable(f"no user 'munge' ({INSTALL})") from None
        # munged checks that every folder above its socket is reachable: not under pytest's 0700 tmp
        root = Path(tempfile.mkdtemp(prefix="sage-bench-slurm-"))
        root.chmod(0o755)
        cluster = cls(
            root=root, slices=dict(slices or {"1g.20gb": 2, "3g.40gb": 1}), programs=programs
        )
        try:
            cluster._start_munge(munge_user)
            cluster._write_config(cpus, partition)
            cluster._start_slurm()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_munge(self, user: pwd.struct_passwd) -> None:
        munge_dir = self.root / "munge"
        munge_dir.mkdir()
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        os.chown(munge_dir, user.pw_uid, user.pw_gid)
        os.chown(key, user.pw_uid, user.pw_gid)
        munge_dir.chmod(0o711)
        socket_path = munge_dir / "munge.socket"
        result = subprocess.run(
            [
                "runuser", "-u", "munge", "--", self.programs["munged"],
                f"--socket={socket_path}", f"--key-file={key}", f"--pid-file={munge_dir / 'munged.pid'}",
                f"--log-file={munge_dir / 'munged.log'}", f"--seed-file={munge_dir / 'munged.seed'}",
            ],
            capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise SlurmUnavailable(f"munged did not start: {result.stderr.strip()}")
        check = subprocess.run(
            [self.programs["munge"], "-n", f"--socket={socket_path}"],
            capture_output=True,
            text=True,
        )
        if check.returncode != 0:
            raise SlurmUnavailable(f"munge does not answer: {check.stderr.strip()}")

    def _write_config(self, cpus: int, partition: str) -> None:
        for name in ("state", "spool", "log", "dev"):
            (self.root / name).mkdir()
        gres_lines = []
        for kind, count in self.slices.items():
            for i in range(count):
                device = self.root / "dev" / f"{kind}-{i}"
                os.mknod(
                    device, 0o600 | stat.S_IFCHR, os.makedev(1, 3)
                )  # a character device like /dev/null, never opened
            gres_lines.append(
                f"NodeName=localhost Name=gpu Type={kind} File={self.root / 'dev'}/{kind}-[0-{count - 1}]"
            )
        gres = ",".join(f"gpu:{kind}:{count}" for kind, count in self.slices.items())
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=sagebench",
                    "SlurmctldHost=localhost",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={r / 'munge' / 'munge.socket'},cred_expire=5",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "GresTypes=gpu",
                    "ReturnToService=2",
                    "MinJobAge=3600",
                    "KillWait=30",
                    "SlurmdParameters=config_overrides",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd.pid'}",
                    f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
                    "MpiDefault=none",
                    "SchedulerParameters=sched_interval=1,bf_interval=1",  # requeued jobs start within seconds
                    f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=64000 Gres={gres} State=UNKNOWN",
                    f"PartitionName={partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        (self.root / "gres.conf").write_text("\n".join(gres_lines) + "\n")

    def _start_slurm(self) -> None:
        env = {**os.environ, **self.env}
        for command in (
            [self.programs["slurmctld"], "-c", "-i", "-f", str(self.conf)],
            [self.programs["slurmd"], "-N", "localhost", "-f", str(self.conf)],
        ):
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                raise SlurmUnavailable(
                    f"{Path(command[0]).name} did not start: {result.stderr.strip()}"
                )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).strip()
            if state == "idle":
                return
            time.sleep(0.2)
        raise SlurmUnavailable(
            f"the node did not become idle (state {state!r}); slurmctld log:\n{_tail(self.root / 'log' / 'slurmctld.log')}"
            f"\nslurmd log:\n{_tail(self.root / 'log' / 'slurmd.log')}"
        )

    def stop(self, timeout_s: float = 60) -> None:
        """Cancel every job, wait for them to end, stop the daemons, delete the folder."""
        if self.conf.exists() and (self.root / "slurmctld.pid").exists():
            self.run("scancel", "--user", "root", check=False)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.queue():
                time.sleep(0.5)
        _stop_processes(
            [self.root / f for f in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid")]
        )
        shutil.rmtree(self.root, ignore_errors=True)

    # -- asking SLURM ------------------------------------------------------------------------

    def run(self, program: str, *args: str, check: bool = True) -> str:
        """Run one of SLURM's commands against this cluster; its standard output."""
        path = shutil.which(program, path=SBIN_PATH) or program
        result = subprocess.run(
            [path, *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def queue(self) -> dict[str, str]:
        """Jobs and array tasks that are not finished: ``{id: state}`` (requeued ones too)."""
        out = self.run("squeue", "-h", "-r", "-t", "all", "-o", "%i %T", check=False)
        pairs = [line.split() for line in out.splitlines() if len(line.split()) == 2]
        return {job: state for job, state in pairs if state not in FINAL_STATES}

    def states(self, job_id: str) -> dict[str, str]:
        """Every task of a job, finished or not (completed jobs stay listed: MinJobAge)."""
        out = self.run("squeue", "-h", "-r", "-t", "all", "-j", job_id, "-o", "%i %T", check=False)
        return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
