"""robolearn: robot learning with one policy API and one data format from simulation to hardware.

The core never imports a simulator or ROS at module top level: environments are found through
gymnasium ids (registered by the ``sims`` and ``hw`` packages) and hydra configs.
"""

__version__ = "0.1.0"
