"""slurm.conf for the local test cluster, as a pure function of its layout.

Every setting here was measured on Debian 12's slurm-wlm 22.05.8 (built with multiple-slurmd
support) in a container without cgroups or systemd:

* ``proctrack/linuxproc`` + ``task/none``: no cgroup plugin needed.
* nodes ``node1..nodeN`` share 127.0.0.1 with one slurmd ``Port`` each; each slurmd runs in
  its own UTS namespace whose hostname is the node name, so a job's ``hostname`` tells the
  node apart as on a real cluster.
* ``AuthInfo=cred_expire=10`` + ``sched_interval=2,bf_interval=1``: a requeued job starts
  again in ~15 s instead of ~140 s.
* ``SlurmdParameters=config_overrides``: nodes may declare more CPUs than the machine has
  (two 2-CPU nodes on a 2-core box).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CTLD_PORT = 6817
SLURMD_BASE_PORT = 6818


@dataclass(frozen=True)
class ClusterLayout:
    workdir: Path
    nodes: int = 1
    cpus_per_node: int = 2
    memory_mb: int = 4000
    munge_socket: Path | None = None

    def __post_init__(self) -> None:
        if self.nodes not in (1, 2, 3, 4):
            raise ValueError(f"nodes={self.nodes}: the local cluster supports 1 to 4 nodes")
        if self.cpus_per_node < 1:
            raise ValueError(f"cpus_per_node={self.cpus_per_node} must be >= 1")

    @property
    def node_names(self) -> list[str]:
        return [f"node{i}" for i in range(1, self.nodes + 1)]

    @property
    def conf_path(self) -> Path:
        return self.workdir / "etc" / "slurm.conf"


def render_slurm_conf(layout: ClusterLayout) -> str:
    w = layout.workdir
    auth = "cred_expire=10"
    if layout.munge_socket is not None:
        auth += f",socket={layout.munge_socket}"
    lines = [
        "# written by hpc.local_slurm: a loopback-only test cluster",
        "ClusterName=lus",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={CTLD_PORT}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo={auth}",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=2,bf_interval=1",
        "SlurmdParameters=config_overrides",
        "ReturnToService=2",
        "JobRequeue=1",
        "KillWait=5",
        "MinJobAge=600",
        "InactiveLimit=0",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        f"StateSaveLocation={w}/state",
        f"SlurmdSpoolDir={w}/spool/%n",
        f"SlurmctldPidFile={w}/run/slurmctld.pid",
        f"SlurmdPidFile={w}/run/slurmd-%n.pid",
        f"SlurmctldLogFile={w}/log/slurmctld.log",
        f"SlurmdLogFile={w}/log/slurmd-%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
    ]
    for i, name in enumerate(layout.node_names):
        lines.append(f"NodeName={name} NodeHostname={name} NodeAddr=127.0.0.1 "
                     f"Port={SLURMD_BASE_PORT + i} CPUs={layout.cpus_per_node} "
                     f"RealMemory={layout.memory_mb} State=UNKNOWN")
    lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def render_hosts(layout: ClusterLayout, machine_hostname: str = "") -> str:
    """/etc/hosts as seen inside the cluster's mount namespace: every name is loopback.

    The machine's own hostname is included because the daemons resolve it at start
    (getaddrinfo fails inside the namespace otherwise) and must not map it to an external
    address.
    """
    names = " ".join(dict.fromkeys(n for n in ["localhost", machine_hostname, *layout.node_names] if n))
    return f"127.0.0.1 {names}\n::1 ip6-localhost\n"


def parse_scontrol_record(text: str) -> dict[str, str]:
    """``scontrol show job -o`` / ``show node -o`` output -> {key: value} (first record).

    Values never contain spaces in the fields we read (JobState, ExitCode, Restarts, NodeList,
    StdOut, State); fields that can (Command, Reason) keep only their first word.
    """
    out: dict[str, str] = {}
    for token in text.strip().splitlines()[0].split() if text.strip() else []:
        key, sep, value = token.partition("=")
        if sep and key not in out:
            out[key] = value
    return out
