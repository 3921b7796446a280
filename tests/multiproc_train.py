"""Run the trainer on a run folder made by the test, in one process or under torch.distributed.run:

    python tests/multiproc_train.py RUN_DIR [--stop-after N] [--resume]

The run's config.json holds the config; rank 0 records metrics, checkpoints and previews (RunRecorder)."""
import argparse
import json
import os
from pathlib import Path

from core.runs.recorder import RunRecorder
from core.vapi.config import VapiConfig
from core.vapi.trainer import Trainer


class StopAfter(RunRecorder):
    """A stop request after `after` steps, seen by rank 0 alone (as a stop file seen one step before the other
    ranks see it): the trainer's any-reduce must stop every rank at the same step boundary."""

    def __init__(self, run_dir, after):
        super().__init__(run_dir)
        self.after, self.calls = after, 0

    def should_stop(self):
        self.calls += 1
        return self.calls > self.after


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--stop-after", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    config = json.loads((args.run_dir / "config.json").read_text())
    cfg = VapiConfig.from_dict({k: v for k, v in config.items() if k != "entry"})
    rank0 = int(os.environ.get("RANK", "0")) == 0
    rec = StopAfter(args.run_dir, args.stop_after) if args.stop_after is not None and rank0 else RunRecorder(args.run_dir)
    Trainer(cfg, args.run_dir, rec).train(resume=args.resume)


if __name__ == "__main__":
    main()
