"""Studies: the paper's claims as experiments (train, evaluate in closed loop, report)."""
