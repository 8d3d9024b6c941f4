"""tf_volpose: coarse-to-fine volumetric 3D human pose (Pavlakos et al., CVPR 2017) in TF2/Keras 3."""

__version__ = "0.1.0"
