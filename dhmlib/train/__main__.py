"""``python -m dhmlib.train …`` (also ``torchrun -m dhmlib.train …``); the arguments are
parsed in :mod:`dhmlib.cli._train_module` (``--help`` lists them)."""
from ..cli._train_module import run

if __name__ == "__main__":
    run()
