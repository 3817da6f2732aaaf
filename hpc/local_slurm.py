"""A real Slurm cluster on this machine, for tests and for users trying the sbatch scripts.

``LocalSlurmCluster(workdir, nodes=1|2)`` installs Debian's slurm-wlm and munge if missing,
writes slurm.conf (:mod:`hpc.slurm_conf`), and starts munged, slurmctld and one slurmd per
node. Everything runs inside a private network + mount namespace owned by a "holder"
process: the network has only ``lo`` (so torchrun, gloo or Ray in a job can reach nothing
but 127.0.0.1), and ``/etc/hosts`` is bind-mounted there to map ``node1..N`` to loopback
without touching the machine's own file. Clients (``sbatch``, ``scontrol``) are run inside
the same namespaces through ``nsenter``.

Stopping is by pid file only: the holder's pid (checked against the recorded namespace id,
so a recycled pid is never signalled) and the processes that share its private network
namespace, which are by construction ours (daemons, step daemons, job processes).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from hpc.slurm_conf import ClusterLayout, parse_scontrol_record, render_hosts, render_slurm_conf

TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
MUNGE_KEY = Path("/etc/munge/munge.key")
SETUP_LOCK = Path("/run/lus-slurm-setup.lock")


@contextlib.contextmanager
def machine_setup_lock():
    """Held while the machine-wide pieces are made (packages, the munge key): two clusters
    starting at once (parallel test workers, two users) must not race apt-get or mungekey."""
    with open(SETUP_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here (not root, packages not installable, no namespaces)."""


def ensure_installed() -> None:
    """apt-get install slurm-wlm + munge when missing; SlurmUnavailable says why it cannot."""
    needed = ("slurmctld", "slurmd", "sbatch", "munged", "nsenter", "unshare")
    if all(shutil.which(b) for b in needed):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurm-wlm/munge are not installed and installing them needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge", "util-linux", "iproute2"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed: {r.stderr.strip()[-500:]}")


def holder_argv(hosts: Path, resolv: Path) -> list[str]:
    """The namespace holder: a constant script, the paths as positional arguments (never
    parsed by sh, whatever the work dir is called)."""
    script = ('ip link set lo up && ip addr add 127.0.0.2/8 dev lo && mount --bind "$1" /etc/hosts'
              ' && mount --bind "$2" /etc/resolv.conf && exec sleep infinity')
    return ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(hosts), str(resolv)]


def slurmd_argv(node: str, conf: Path | str) -> list[str]:
    """One slurmd in its own UTS namespace named after its node; the same argv discipline."""
    return ["unshare", "--uts", "sh", "-c", 'hostname "$1" && exec slurmd -D -N "$1" -f "$2"', "sh",
            node, str(conf)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


class LocalSlurmCluster:
    """Context manager around the daemons; ``LocalSlurmCluster(dir).down()`` also stops a cluster
    started by another process (``lus cluster up``) from its pid files."""

    def __init__(self, workdir: str | Path, nodes: int = 1, cpus_per_node: int = 2) -> None:
        workdir = Path(workdir).resolve()
        tag = hashlib.sha1(str(workdir).encode()).hexdigest()[:8]
        # munged runs as the munge user, which cannot enter a root-only tmp dir: its
        # socket lives in /run under a name derived from the work dir.
        self.munge_dir = Path(f"/run/lus-munge-{tag}")
        self.layout = ClusterLayout(workdir, nodes, cpus_per_node, munge_socket=self.munge_dir / "socket")
        self.workdir = workdir
        self.run_dir = workdir / "run"
        self.log_dir = workdir / "log"
        self._procs: list[subprocess.Popen] = []   # ours to reap when this process stops them

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> "LocalSlurmCluster":
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self, timeout: float = 90.0) -> "LocalSlurmCluster":
        if os.geteuid() != 0:
            raise SlurmUnavailable("the local Slurm cluster needs root (namespaces, munge, slurmd)")
        with machine_setup_lock():
            ensure_installed()
            self._ensure_munge_key()
        if self._holder_pid() is not None:
            raise RuntimeError(f"a local cluster is already running from {self.workdir}; "
                               f"run `lus cluster down --dir {self.workdir}` first")
        self._write_files()
        self._start_holder()
        self._start("munged", ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups",
                               "munged", "-F", "--origin=127.0.0.1", f"--socket={self.munge_dir / 'socket'}",
                               f"--pid-file={self.munge_dir / 'munged.pid'}",
                               f"--log-file={self.munge_dir / 'munged.log'}",
                               f"--seed-file={self.munge_dir / 'munged.seed'}"])
        self._wait_for(lambda: (self.munge_dir / "socket").exists(), 20, "munged socket")
        conf = str(self.layout.conf_path)
        self._start("slurmctld", ["slurmctld", "-D", "-c", "-f", conf])
        for name in self.layout.node_names:
            self._start(f"slurmd-{name}", slurmd_argv(name, conf))
        self._wait_for(self._nodes_idle, timeout, "idle nodes")
        return self

    def down(self, timeout: float = 15.0, grace: float = 3.0) -> None:
        """Stop what this work dir started: daemons, then every process left in our namespace."""
        holder = self._holder_pid()
        for name in [f"slurmd-{n}" for n in self.layout.node_names] + ["slurmctld", "munged"]:
            pid = self._own_pid(name, holder)
            if pid:
                os.kill(pid, signal.SIGTERM)
        if holder is not None:
            ns = _netns(holder)
            start = time.monotonic()   # SIGTERM for a grace period, then SIGKILL
            while (left := self._members(holder, ns)) and time.monotonic() < start + timeout:
                sig = signal.SIGTERM if time.monotonic() < start + grace else signal.SIGKILL
                for pid in left:
                    self._signal(pid, sig)
                time.sleep(0.3)
            for pid in self._members(holder, ns):
                self._signal(pid, signal.SIGKILL)
            self._signal(holder, signal.SIGKILL)
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._procs.clear()
        for f in self.run_dir.glob("lus-*.pid"):
            f.unlink(missing_ok=True)
        shutil.rmtree(self.munge_dir, ignore_errors=True)

    # ------------------------------------------------------------ clients
    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The client environment: our slurm.conf, no SLURM_* leaking from an outer job."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(SLURM_CONF=str(self.layout.conf_path), OMP_NUM_THREADS="1")
        env.update(extra or {})
        return env

    def run(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = None,
            check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run a client command inside the cluster's namespaces."""
        holder = self._holder_pid()
        if holder is None:
            raise RuntimeError(f"no local cluster is running from {self.workdir}")
        wd = Path(cwd or os.getcwd()).resolve()
        r = subprocess.run(self._ns(holder, wd) + list(argv), env=self.env(env), cwd=wd,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()}")
        return r

    def sbatch(self, script: str | Path, *args: str, script_args: tuple[str, ...] | list[str] = (),
               env: dict[str, str] | None = None, cwd: str | Path | None = None) -> int:
        """Submit ``script`` with sbatch options ``args``; returns the job id."""
        out = self.run(["sbatch", "--parsable", *args, str(script), *script_args], env=env, cwd=cwd).stdout
        return int(out.strip().split(";")[0])

    def job_records(self, job_id: int | str) -> list[dict[str, str]]:
        """One record per job (or per array task) from ``scontrol show job -o``."""
        r = self.run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        return [parse_scontrol_record(line) for line in r.stdout.splitlines() if line.strip()]

    def job_state(self, job_id: int | str) -> str:
        records = self.job_records(job_id)
        return ",".join(sorted({r.get("JobState", "UNKNOWN") for r in records})) or "UNKNOWN"

    def wait(self, job_id: int | str, timeout: float = 300.0, poll: float = 1.0) -> list[dict[str, str]]:
        """Poll until every record of the job is terminal (``sbatch --wait`` polls only every 32 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.job_records(job_id)
            if records and all(r.get("JobState") in TERMINAL_STATES for r in records):
                return records
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} not finished after {timeout:.0f}s (state "
                           f"{self.job_state(job_id)}); log tail:\n{self.logs(job_id)[-3000:]}")

    def logs(self, job_id: int | str) -> str:
        """The job's output file(s) (its StdOut, for every array task)."""
        texts = []
        for rec in self.job_records(job_id):
            path = Path(rec.get("StdOut", ""))
            if path.is_file():
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)

    def status(self) -> str:
        if self._holder_pid() is None:
            return f"no local cluster running from {self.workdir}"
        return self.run(["sinfo", "-N", "-o", "%N %T %c %P"], check=False).stdout

    # ------------------------------------------------------------ internals
    def _write_files(self) -> None:
        for d in ("etc", "state", "spool", "run", "log"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        for name in self.layout.node_names:
            (self.workdir / "spool" / name).mkdir(exist_ok=True)
        self.layout.conf_path.write_text(render_slurm_conf(self.layout))
        (self.workdir / "etc" / "hosts").write_text(render_hosts(self.layout, socket.gethostname()))
        (self.workdir / "etc" / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        shutil.rmtree(self.munge_dir, ignore_errors=True)
        self.munge_dir.mkdir(parents=True)
        self.munge_dir.chmod(0o755)  # munged insists on execute permission for all
        shutil.chown(self.munge_dir, "munge", "munge")

    @staticmethod
    def _ensure_munge_key() -> None:
        if not MUNGE_KEY.exists():
            subprocess.run(["mungekey", "--create", f"--keyfile={MUNGE_KEY}"], check=True)
            shutil.chown(MUNGE_KEY, "munge", "munge")

    def _start_holder(self) -> None:
        hosts = self.workdir / "etc" / "hosts"
        # A second loopback address: glibc's AI_ADDRCONFIG ignores 127.0.0.1, so without it
        # Slurm's getaddrinfo(NULL, AF_INET) finds no IPv4 address and cannot bind.
        # resolv.conf points at loopback too: a reverse lookup (c10d does some) then fails at
        # once on 127.0.0.1 instead of trying the machine's real name server.
        resolv = self.workdir / "etc" / "resolv.conf"
        proc = subprocess.Popen(holder_argv(hosts, resolv), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=open(self.log_dir / "holder.err", "w"))
        ours = _netns(os.getpid())
        self._wait_for(lambda: proc.poll() is None and _netns(proc.pid) not in (None, ours)
                       and "sleep" in Path(f"/proc/{proc.pid}/cmdline").read_text(), 10, "namespace holder")
        self._procs.append(proc)
        (self.run_dir / "lus-holder.pid").write_text(f"{proc.pid} {_netns(proc.pid)}\n")

    def _start(self, name: str, argv: list[str]) -> None:
        holder = self._holder_pid()
        assert holder is not None
        log = open(self.log_dir / f"{name}.out", "ab")
        proc = subprocess.Popen(self._ns(holder) + argv, env=self.env(), stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs.append(proc)
        (self.run_dir / f"lus-{name}.pid").write_text(f"{proc.pid}\n")
        time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at start ({proc.returncode}); see {self.log_dir}/{name}.out")

    @staticmethod
    def _ns(holder: int, wd: Path | None = None) -> list[str]:
        """Enter the holder's namespaces (nsenter --mount alone would start in /)."""
        return ["nsenter", f"--net=/proc/{holder}/ns/net", f"--mount=/proc/{holder}/ns/mnt",
                f"--wd={wd or '/'}", "--"]

    def _holder_pid(self) -> int | None:
        """The recorded holder pid, only if that pid still owns the recorded namespace."""
        f = self.run_dir / "lus-holder.pid"
        if not f.is_file():
            return None
        pid_s, _, ns = f.read_text().strip().partition(" ")
        pid = int(pid_s)
        return pid if _alive(pid) and _netns(pid) == ns else None

    def _own_pid(self, name: str, holder: int | None) -> int | None:
        f = self.run_dir / f"lus-{name}.pid"
        if holder is None or not f.is_file():
            return None
        pid = int(f.read_text().split()[0])
        return pid if _netns(pid) == _netns(holder) else None

    @staticmethod
    def _members(holder: int, ns: str | None) -> list[int]:
        """Pids in the holder's private network namespace other than the holder itself."""
        if ns is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != holder and _netns(int(entry.name)) == ns:
                pids.append(int(entry.name))
        return pids

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _nodes_idle(self) -> bool:
        r = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False, timeout=20)
        states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
        return (sorted(states) == self.layout.node_names
                and all(s.rstrip("*") == "idle" for s in states.values()))

    def _wait_for(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if cond():
                    return
            except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"local Slurm cluster: no {what} after {timeout:.0f}s; logs in {self.log_dir}")
