"""Pure-torch models of prevla (VLA policy, Pre-VLA verifier, world model). Imports neither rclpy nor ray."""
