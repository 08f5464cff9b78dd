"""One node of an msrun job: msrun's own flags and behaviour, with the scheduler on node rank 0 only
and a one-line reason when the job fails. scripts/train_launcher.sh runs it; see docs/distributed.md.

    python scripts/msrun_node.py --worker_num=16 --local_worker_num=8 --node_rank=1 \
        --master_addr=10.0.0.1 --master_port=8118 --log_dir=... --join=True train.py [train.py flags...]

msrun starts the scheduler on every node that owns MASTER_ADDR. When several nodes share one
host (containers on the host network, or two nodes on loopback) each of them would start one,
and every msrun but the first would fail on the taken port after its workers had trained.
Here node rank 0 starts it, and MASTER_ADDR must be one of node rank 0's own addresses.
This drives msrun's own process manager (MindSpore 2.10, as requirements.txt pins).
"""
import glob
import os
import sys

from mindspore.parallel.cluster.process_entity import _ProcessManager
from mindspore.parallel.cluster.run import get_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from src.context import UserError, run_cli  # noqa: E402

CLUSTER_NOT_FORMED = "Failed to initialize distributed job cluster"  # MindSpore's worker message


def worker_logs(log_dir):
    logs = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "worker_*.log"))):
        with open(path, errors="replace") as f:
            logs[path] = f.read()
    return logs


def failure_reason(args):
    """The first worker's own `error:` line, a cluster that never formed, or where the logs are."""
    logs = worker_logs(args.log_dir)
    for path, text in logs.items():
        for line in text.splitlines():
            if line.startswith("error: "):
                return f"{os.path.basename(path)}: {line[len('error: '):]}"
    if any(CLUSTER_NOT_FORMED in text for text in logs.values()):
        return (f"node rank {args.node_rank}: the cluster of {args.worker_num} workers did not form within "
                f"{args.cluster_time_out} s. Is node rank 0 running, with its scheduler at "
                f"{args.master_addr}:{args.master_port} reachable from here? Every node needs the same "
                f"WORKERS, LOCAL_WORKERS, MASTER_ADDR and MASTER_PORT and its own NODE_RANK; "
                f"raise CLUSTER_TIMEOUT if nodes start far apart")
    return f"the distributed job failed; worker logs: {', '.join(logs) or args.log_dir}"


def main():
    args = get_args()
    try:
        manager = _ProcessManager(args)
    except RuntimeError as err:  # msrun resolves MASTER_ADDR and finds this machine's address towards it
        raise UserError(f"MASTER_ADDR {args.master_addr!r} is not usable: {str(err).split('.')[0]}") from None
    if args.node_rank > 0:
        manager.is_master = False
    elif args.node_rank == 0 and not manager.is_master:
        raise UserError(f"node rank 0 runs the scheduler, so MASTER_ADDR must be an address of this machine; "
                        f"{args.master_addr} is not")
    try:
        manager.run()
    except RuntimeError:
        raise UserError(failure_reason(args)) from None


if __name__ == "__main__":
    sys.exit(run_cli(main))
