"""Off-board training of prevla: datasets, verifier training, D-VLA on Ray, export."""
