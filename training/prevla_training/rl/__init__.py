"""D-VLA: distributed asynchronous RL for the VLA on Ray (actors, flow-noise PPO, replication)."""
