"""`python -m fishscale.train --config X.yaml [--resume] [overrides]`: one training rank, as the
deepspeed launcher starts it (`fishscale train --nproc N` does; so does launch/train.py)."""
import sys

from fishscale.train.loop import launch_main

sys.exit(launch_main(prog="python -m fishscale.train"))
