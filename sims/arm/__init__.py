"""MuJoCo Panda arm: scene model, reach / push / pick-and-place envs and scripted experts.

The envs are made through gymnasium ids (``import sims`` registers them), e.g.
``gymnasium.make("robolearn/ArmPush-v0")``; this package imports no simulator by itself.
"""
