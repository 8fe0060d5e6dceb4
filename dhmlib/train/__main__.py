"""``python -m dhmlib.train …`` (what ``dhm train --gpu/--nproc`` starts under torchrun on every rank);
the arguments are those of ``dhm train`` without the launcher (:mod:`dhmlib.cli.train`, ``--help``)."""
from dhmlib.cli.train import module_run

if __name__ == "__main__":
    module_run()
