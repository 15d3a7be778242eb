"""LIBERO simulation for prevla (ROS-free): environment adapter, scripted expert, expert eval.

Importing this package does not import LIBERO; ``libero_env`` does, lazily where possible.
"""
