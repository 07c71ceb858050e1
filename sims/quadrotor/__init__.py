"""Quadrotor simulation: batched torch dynamics (L2F equations), vehicle parameters and envs.

``robolearn/Quadrotor-v0`` (``import sims`` registers it) is one quadrotor; its vector entry
point, :class:`sims.quadrotor.env.QuadrotorVectorEnv`, steps a whole batch of different vehicles
in one set of tensor operations.
"""
