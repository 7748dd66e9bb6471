"""`python -m fishscale.train --config X.yaml [--resume] [overrides]`: one training rank, as the
deepspeed launcher starts it (`fishscale train --nproc N` does; so does launch/train.py)."""
import sys

from fishscale.train import preempt

preempt.install()                  # before torch is imported: a stop signal during startup is kept
from fishscale.train.loop import launch_main  # noqa: E402

sys.exit(launch_main(prog="python -m fishscale.train"))
